-- GDC manifest rows that match no IDC series: kept, marked for the GDC path.
SELECT
    'gdc' AS fetch_from,
    g.file_id AS gdc_file_id,
    g.filename AS gdc_filename,
    g.md5 AS gdc_md5,
    g.size_bytes AS gdc_size,
    g.barcode AS ContainerIdentifier
FROM gdc_files AS g
WHERE NOT EXISTS (
    SELECT 1 FROM gdc_matchable AS c WHERE c.ContainerIdentifier = g.barcode
)
