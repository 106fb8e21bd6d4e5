"""Time the cohort step on the real IDC index (all 76,300 SM series of v25).

Usage: python benchmarks/cohort.py [--collection tcga_brca] [--n 100] [--seed 42] [--real-sm-tables]

The `index` table is the one bundled in idc-index-data. `sm_index` is not
bundled: with --real-sm-tables it is fetched through idc-index (needs the
network); otherwise a stand-in with one row per SM series of the real index,
in the real schema, is built first (not timed). Prints the candidate count
and the wall time of selection (connect, filter, draw, lock text).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow" / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "testkit"))

from slidestock.select.cohort import CohortSpec, select_cohort
from slidestock.select.lockfile import lock_frame, lock_text
from slidestock.select.sources import TablePaths, bundled_prior_versions, connect, idc_index_tables
from slidestock_testkit.indextables import arrow_table


def stand_in_tables(folder: Path) -> TablePaths:
    import idc_index_data

    index = Path(str(idc_index_data.IDC_INDEX_PARQUET_FILEPATH))
    sm = pd.read_parquet(index, columns=["SeriesInstanceUID", "PatientID", "Modality"])
    sm = sm[sm["Modality"] == "SM"]
    rows = [
        {"SeriesInstanceUID": u, "ContainerIdentifier": p}
        for u, p in zip(sm["SeriesInstanceUID"], sm["PatientID"], strict=True)
    ]
    pq.write_table(arrow_table("sm_index", rows), folder / "sm_index.parquet")
    pq.write_table(arrow_table("sm_instance_index", []), folder / "sm_instance_index.parquet")
    return TablePaths(
        index, folder / "sm_index.parquet", folder / "sm_instance_index.parquet", bundled_prior_versions()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collection", default="tcga_brca")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--real-sm-tables", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tables = idc_index_tables() if args.real_sm_tables else stand_in_tables(Path(folder))
        spec = CohortSpec(filters={"collection_id": [args.collection], "Modality": ["SM"]}, n=args.n, seed=args.seed)
        start = time.perf_counter()
        cohort = select_cohort(connect(tables), spec, 25)
        text = lock_text(lock_frame(cohort, 25), {"seed": args.seed})
        seconds = time.perf_counter() - start
    print(
        f"collection={args.collection} n={args.n} seed={args.seed}: {cohort.n_candidates} candidates before "
        f"sampling, {len(cohort.slides)} drawn, {len(text):,} lock bytes, {seconds:.2f} s"
        + ("" if args.real_sm_tables else " (stand-in sm_index)")
    )


if __name__ == "__main__":
    main()
