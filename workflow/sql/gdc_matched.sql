-- GDC manifest rows whose slide barcode (read from the file name) is the
-- ContainerIdentifier of an IDC series: those slides take the IDC path.
SELECT
    c.*,
    'idc' AS fetch_from,
    g.file_id AS gdc_file_id,
    g.filename AS gdc_filename,
    g.md5 AS gdc_md5,
    g.size_bytes AS gdc_size
FROM gdc_matchable AS c
JOIN gdc_files AS g ON c.ContainerIdentifier = g.barcode
