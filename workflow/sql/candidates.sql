-- Candidate slides of IDC release $idc_version: one row per slide microscopy
-- series, with every column of the idc-index `index` table and of `sm_index`,
-- so that `cohort.filter` can name any of them.
--
-- A series of the current index was in release N when its last revision is no
-- later than N; older versions of revised or removed series come from
-- `prior_versions_index`, with the bucket that release used. Filters are
-- applied to this relation afterwards with bound values.
SELECT
    i.*,
    s.* EXCLUDE (SeriesInstanceUID),
    TRUE AS in_current_index
FROM "index" AS i
JOIN sm_index AS s USING (SeriesInstanceUID)
WHERE coalesce(i.series_revised_idc_version, i.series_init_idc_version, 0) <= $idc_version
UNION ALL BY NAME
SELECT
    p.* EXCLUDE (min_idc_version, max_idc_version, gcs_bucket),
    s.* EXCLUDE (SeriesInstanceUID),
    FALSE AS in_current_index
FROM prior_versions_index AS p
LEFT JOIN sm_index AS s USING (SeriesInstanceUID)
WHERE p.Modality = 'SM'
    AND $idc_version BETWEEN p.min_idc_version AND p.max_idc_version
