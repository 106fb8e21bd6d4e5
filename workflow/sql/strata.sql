-- Rows per stratum in the sampling pool.
SELECT stratum, count(*) AS available
FROM pool
GROUP BY stratum
ORDER BY stratum
