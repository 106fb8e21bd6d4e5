"""IDC index tables (``index``, ``sm_index``, ``sm_instance_index``) for written series.

The column names and types are those of the real tables, taken from the ``idc-index-data``
wheel's schemas; values are rounded as idc-index publishes them (spacings to 2 significant
figures). ``dicom_all`` is the BigQuery export's layout, for ``cohort.source: idc_parquet``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import idc_index_data
import pyarrow as pa
import pyarrow.parquet as pq
from pydicom.uid import UID

from slidestock_testkit.dicomseries import illumination
from slidestock_testkit.slides import BUCKET, PHOTOMETRIC, TRANSFER_SYNTAX_NAMES, WSI_SOP_CLASS, SeriesRecord, uid_for


def _bigquery_type(column: dict[str, Any]) -> pa.DataType:
    scalar = {"STRING": pa.string(), "FLOAT": pa.float64(), "INTEGER": pa.int64()}[str(column["type"])]
    return pa.list_(scalar) if column.get("mode") == "REPEATED" else scalar


def table_schema(index_name: str) -> pa.Schema:
    """The Arrow schema of an idc-index table, from the schema the wheel ships."""
    if index_name == "index":
        path = idc_index_data.IDC_INDEX_PARQUET_FILEPATH
        assert path is not None
        return pq.read_schema(path).remove_metadata()
    meta = idc_index_data.INDEX_METADATA[index_name]["schema"]
    assert isinstance(meta, dict)
    columns = meta["columns"]
    assert isinstance(columns, list)
    return pa.schema([(c["name"], _bigquery_type(c)) for c in columns])


def arrow_table(index_name: str, rows: Iterable[dict[str, Any]]) -> pa.Table:
    """Rows as an Arrow table with exactly the idc-index schema (missing columns are null)."""
    schema = table_schema(index_name)
    rows = list(rows)
    unknown = {k for r in rows for k in r} - set(schema.names)
    if unknown:
        raise ValueError(f"fixture columns {sorted(unknown)} are not in the {index_name} schema")
    columns = {name: [r.get(name) for r in rows] for name in schema.names}
    return pa.table(columns, schema=schema)


def _round_sf(value: float, figures: int = 2) -> float:
    return round(value, figures - 1 - math.floor(math.log10(abs(value))))


def index_rows(records: Sequence[SeriesRecord], idc_version: int) -> list[dict[str, Any]]:
    rows = []
    for rec in records:
        syntaxes = sorted({i.transfer_syntax for i in rec.instances})
        rows.append(
            {
                "collection_id": rec.spec.collection_id,
                "PatientID": rec.spec.patient_id,
                "SeriesInstanceUID": rec.series_uid,
                "StudyInstanceUID": rec.study_uid,
                "source_DOI": f"10.5555/slidestock.{rec.spec.collection_id}",
                "Modality": "SM",
                "SOPClassUID": str(WSI_SOP_CLASS),
                "sop_class_name": "VL Whole Slide Microscopy Image Storage",
                "TransferSyntaxUID": ",".join(syntaxes),
                "transfer_syntax_name": ",".join(TRANSFER_SYNTAX_NAMES[UID(s)] for s in syntaxes),
                "PhotometricInterpretation": ",".join(
                    sorted({rec.spec.photometric or PHOTOMETRIC[UID(s)] for s in syntaxes})
                ),
                "PixelRepresentation": "0",
                "Manufacturer": "slidestock synthetic",
                "SeriesDescription": "synthetic whole slide image",
                "SeriesNumber": "1",
                "instanceCount": len(rec.instances),
                "license_short_name": "CC BY 4.0",
                "series_init_idc_version": idc_version,
                "series_revised_idc_version": idc_version,
                "aws_bucket": BUCKET,
                "crdc_series_uuid": rec.crdc_series_uuid,
                "series_aws_url": f"s3://{BUCKET}/{rec.crdc_series_uuid}/*",
                "series_size_MB": rec.size_bytes / 1_000_000.0,
            }
        )
    return rows


def sm_index_rows(records: Sequence[SeriesRecord]) -> list[dict[str, Any]]:
    rows = []
    for rec in records:
        base = rec.instances[0]
        rows.append(
            {
                "SeriesInstanceUID": rec.series_uid,
                "ContainerIdentifier": rec.spec.container_id,
                "embeddingMedium_CodeMeaning": ["Tissue freezing medium"],
                "tissueFixative_CodeMeaning": ["Neutral Buffered Formalin"],
                "staining_usingSubstance_CodeMeaning": ["hematoxylin stain", "water soluble eosin stain"],
                "min_PixelSpacing_2sf": None if base.spacing_um is None else _round_sf(base.spacing_um / 1000.0),
                "max_TotalPixelMatrixColumns": base.size_px[0],
                "max_TotalPixelMatrixRows": base.size_px[1],
                "ObjectiveLensPower": 40,
                "primaryAnatomicStructure_CodeMeaning": "Breast" if "brca" in rec.spec.collection_id else "Lung",
                "illuminationType_CodeMeaning": str(illumination(rec.spec).CodeMeaning),
            }
        )
    return rows


def sm_instance_index_rows(records: Sequence[SeriesRecord]) -> list[dict[str, Any]]:
    rows = []
    for rec in records:
        for inst in rec.instances:
            rows.append(
                {
                    "SOPInstanceUID": inst.sop_instance_uid,
                    "SeriesInstanceUID": rec.series_uid,
                    "staining_usingSubstance_CodeMeaning": [
                        "hematoxylin stain",
                        "water soluble eosin stain",
                    ],
                    "PixelSpacing_0": None if inst.spacing_um is None else _round_sf(inst.spacing_um / 1000.0),
                    "ImageType": list(inst.image_type),
                    "TransferSyntaxUID": inst.transfer_syntax,
                    "instance_size": inst.size_bytes,
                    "TotalPixelMatrixColumns": inst.size_px[0],
                    "TotalPixelMatrixRows": inst.size_px[1],
                    "crdc_instance_uuid": inst.crdc_instance_uuid,
                }
            )
    return rows


def write_tables(records: Sequence[SeriesRecord], out_dir: Path, idc_version: int) -> dict[str, Path]:
    """Write the three index tables for ``records``; returns their paths by table name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = {
        "index": arrow_table("index", index_rows(records, idc_version)),
        "sm_index": arrow_table("sm_index", sm_index_rows(records)),
        "sm_instance_index": arrow_table("sm_instance_index", sm_instance_index_rows(records)),
    }
    paths = {}
    for name, table in tables.items():
        path = out_dir / f"{name}.parquet"
        pq.write_table(table, path)
        paths[name] = path
    return paths


DICOM_ALL_PREFIX = "idc-open-metadata/bigquery_export/idc_v{version}/dicom_all"


def write_dicom_all(tables: Mapping[str, Path], folder: Path) -> Path:
    """An IDC Parquet export (``dicom_all``, one row per instance) of the fixture tables.

    Only the columns slidestock reads, under their real dicom_all names and
    nesting (PixelSpacing inside SharedFunctionalGroupsSequence), split in
    two files, plus one CT instance that a Modality filter must drop.
    """
    index = pq.read_table(tables["index"]).to_pandas().set_index("SeriesInstanceUID")
    sm = pq.read_table(tables["sm_index"]).to_pandas().set_index("SeriesInstanceUID")
    rows = []
    for inst in pq.read_table(tables["sm_instance_index"]).to_pylist():
        series = index.loc[inst["SeriesInstanceUID"]]
        spacing = inst["PixelSpacing_0"]
        rows.append(
            {
                "collection_id": series["collection_id"],
                "PatientID": series["PatientID"],
                "StudyInstanceUID": series["StudyInstanceUID"],
                "SeriesInstanceUID": inst["SeriesInstanceUID"],
                "SOPInstanceUID": inst["SOPInstanceUID"],
                "Modality": "SM",
                "ContainerIdentifier": sm.loc[inst["SeriesInstanceUID"], "ContainerIdentifier"],
                "source_DOI": series["source_DOI"],
                "license_short_name": series["license_short_name"],
                "aws_bucket": series["aws_bucket"],
                "crdc_series_uuid": series["crdc_series_uuid"],
                "crdc_instance_uuid": inst["crdc_instance_uuid"],
                "series_aws_url": f"s3://{series['aws_bucket']}/{series['crdc_series_uuid']}/",
                "instance_size": inst["instance_size"],
                "ImageType": inst["ImageType"],
                "TransferSyntaxUID": inst["TransferSyntaxUID"],
                "TotalPixelMatrixColumns": inst["TotalPixelMatrixColumns"],
                "TotalPixelMatrixRows": inst["TotalPixelMatrixRows"],
                "SharedFunctionalGroupsSequence": [
                    {"PixelMeasuresSequence": [{"PixelSpacing": None if spacing is None else [spacing, spacing]}]}
                ],
            }
        )
    rows.append(dict(rows[0], Modality="CT", SeriesInstanceUID=uid_for("ct"), SOPInstanceUID=uid_for("ct", 1)))
    folder.mkdir(parents=True, exist_ok=True)
    half = len(rows) // 2
    for number, part in enumerate((rows[:half], rows[half:])):
        pq.write_table(pa.Table.from_pylist(part), folder / f"{number:012d}.parquet")
    return folder
