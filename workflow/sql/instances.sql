-- Every instance (pyramid level, label, overview, thumbnail) of the given series.
SELECT
    SeriesInstanceUID,
    SOPInstanceUID,
    crdc_instance_uuid,
    ImageType,
    PixelSpacing_0,
    TotalPixelMatrixColumns,
    TotalPixelMatrixRows,
    TransferSyntaxUID,
    instance_size
FROM sm_instance_index
WHERE list_contains($series, SeriesInstanceUID)
ORDER BY SeriesInstanceUID, SOPInstanceUID
