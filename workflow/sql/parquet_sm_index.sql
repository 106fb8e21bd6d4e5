-- The `sm_index` columns slidestock uses, from the IDC Parquet export.
SELECT
    SeriesInstanceUID,
    any_value(ContainerIdentifier) AS ContainerIdentifier,
    min(TRY_CAST(SharedFunctionalGroupsSequence[1].PixelMeasuresSequence[1].PixelSpacing[1] AS DOUBLE))
        AS min_PixelSpacing_2sf,
    max(TotalPixelMatrixColumns) AS max_TotalPixelMatrixColumns,
    max(TotalPixelMatrixRows) AS max_TotalPixelMatrixRows
FROM dicom_all
WHERE Modality = 'SM'
GROUP BY SeriesInstanceUID
