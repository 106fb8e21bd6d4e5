-- The idc-index `index` columns slidestock uses, rebuilt from the IDC Parquet
-- export (dicom_all: one row per instance) as idc-index builds them.
SELECT
    SeriesInstanceUID,
    any_value(collection_id) AS collection_id,
    any_value(PatientID) AS PatientID,
    any_value(StudyInstanceUID) AS StudyInstanceUID,
    any_value(Modality) AS Modality,
    any_value(source_DOI) AS source_DOI,
    any_value(license_short_name) AS license_short_name,
    any_value(aws_bucket) AS aws_bucket,
    any_value(crdc_series_uuid) AS crdc_series_uuid,
    any_value(series_aws_url) || '*' AS series_aws_url,
    sum(CAST(instance_size AS DOUBLE)) / 1000000.0 AS series_size_MB,
    CAST(NULL AS BIGINT) AS series_init_idc_version,
    CAST(NULL AS BIGINT) AS series_revised_idc_version
FROM dicom_all
WHERE Modality = 'SM'
GROUP BY SeriesInstanceUID
