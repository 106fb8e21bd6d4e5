-- Candidate slides: one row per slide microscopy series, with every column of
-- the idc-index `index` table and of `sm_index` (joined on the series UID), so
-- that `cohort.filter` can name any of them. The filter itself is applied to
-- this relation with bound values, never spliced into this text.
SELECT *
FROM "index"
JOIN sm_index USING (SeriesInstanceUID)
