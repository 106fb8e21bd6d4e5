-- The sampling pool: candidates with their seeded sort key
-- md5(seed || ':' || sample_id), which depends only on the seed and the ids,
-- never on row order or DuckDB's thread count. With $one_per_patient, each
-- patient keeps only the series with the smallest key.
SELECT
    *,
    md5(CAST($seed AS VARCHAR) || ':' || sample_id) AS sample_key
FROM candidates
QUALIFY NOT $one_per_patient
    OR PatientID IS NULL
    OR row_number() OVER (PARTITION BY PatientID ORDER BY sample_key, sample_id) = 1
