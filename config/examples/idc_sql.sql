-- Any query over the views "index", sm_index, sm_instance_index and
-- prior_versions_index that returns a SeriesInstanceUID column.
-- $name parameters are bound from cohort.sql_params.
SELECT s.SeriesInstanceUID
FROM sm_index AS s
JOIN "index" AS i USING (SeriesInstanceUID)
WHERE i.collection_id = $collection
    AND s.ObjectiveLensPower >= $min_power
