-- The draw: within each stratum, the `quota` rows with the smallest keys.
-- Without stratification there is one stratum holding every row.
SELECT p.* EXCLUDE (sample_key, stratum_rank)
FROM (
    SELECT
        *,
        row_number() OVER (PARTITION BY stratum ORDER BY sample_key, sample_id) AS stratum_rank
    FROM pool
) AS p
JOIN quotas AS q USING (stratum)
WHERE p.stratum_rank <= q.quota
