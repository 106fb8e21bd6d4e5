-- The `sm_instance_index` columns slidestock uses, from the IDC Parquet export.
SELECT
    SOPInstanceUID,
    SeriesInstanceUID,
    TRY_CAST(SharedFunctionalGroupsSequence[1].PixelMeasuresSequence[1].PixelSpacing[1] AS DOUBLE)
        AS PixelSpacing_0,
    ImageType,
    TransferSyntaxUID,
    instance_size,
    TotalPixelMatrixColumns,
    TotalPixelMatrixRows,
    crdc_instance_uuid
FROM dicom_all
WHERE Modality = 'SM'
