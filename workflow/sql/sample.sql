-- Seeded random sample of the filtered candidates.
-- Each series is ranked by md5(seed || ':' || SeriesInstanceUID): the draw
-- depends only on the seed and the UIDs, never on row order or thread count.
-- $n NULL keeps every candidate.
SELECT *
FROM candidates
QUALIFY $n IS NULL
    OR row_number() OVER (
        ORDER BY md5(CAST($seed AS VARCHAR) || ':' || SeriesInstanceUID), SeriesInstanceUID
    ) <= $n
