"""s5cmd against a real S3 server on loopback: bytes, size checks, retries, argv."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from slidestock.errors import ConfigError, FetchError
from slidestock.fetch import check_size, fetch_object, s5cmd_argv, source_url
from slidestock.plan import object_url
from slidestock.s3server import S3Server


@pytest.fixture(scope="module")
def one_instance(instance_table: pd.DataFrame, demo_build: dict[str, Path]) -> tuple[str, int, Path]:
    """URL, index size and local path of the demo's smallest instance."""
    row = instance_table.sort_values("instance_size").iloc[0]
    index = pd.read_parquet(demo_build["index"]).set_index("SeriesInstanceUID")
    series_uuid = index.loc[row["SeriesInstanceUID"], "crdc_series_uuid"]
    url = object_url("idc-open-data", series_uuid, row["crdc_instance_uuid"])
    local = demo_build["s3_root"] / "idc-open-data" / series_uuid / f"{row['crdc_instance_uuid']}.dcm"
    return url, int(row["instance_size"]), local


def test_fetch_copies_the_exact_bytes(s3: S3Server, one_instance: tuple[str, int, Path], tmp_path: Path) -> None:
    url, size, original = one_instance
    result = fetch_object(url, tmp_path / "x.dcm", size, s3.url, attempts=1)
    assert result.bytes_fetched == size == original.stat().st_size
    assert (tmp_path / "x.dcm").read_bytes() == original.read_bytes()
    assert result.attempts == 1


def test_wrong_index_size_is_retried_once_and_leaves_nothing(
    s3: S3Server, one_instance: tuple[str, int, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url, size, _ = one_instance
    with pytest.raises(FetchError, match=rf"wrong size twice; .*downloaded {size} bytes; expected {size + 1}"):
        fetch_object(url, tmp_path / "x.dcm", size + 1, s3.url, attempts=5, backoff_s=0.01)
    assert list(tmp_path.iterdir()) == []
    # One retry after the first wrong size; the second ends it, long before attempt 5.
    assert [m for r in caplog.records if "attempt" in (m := r.getMessage())] == [
        f"fetch {url}: attempt 1/5 failed: {url}: downloaded {size} bytes; expected {size + 1} bytes (instance_size)"
    ]


def test_missing_object_is_a_fetch_error(s3: S3Server, tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="s5cmd exited 1"):
        fetch_object("s3://idc-open-data/nope/nope.dcm", tmp_path / "x.dcm", 10, s3.url, attempts=1)
    assert list(tmp_path.iterdir()) == []


def test_check_size_deletes_a_short_file(tmp_path: Path) -> None:
    path = tmp_path / "short.dcm"
    path.write_bytes(b"x" * 99)
    with pytest.raises(FetchError, match=r"short: downloaded 99 bytes; expected 100 bytes"):
        check_size(path, 100, "short")
    assert not path.exists()
    path.write_bytes(b"x" * 100)
    assert check_size(path, 100, "ok") == 100


def test_argv_per_endpoint() -> None:
    dest = Path("/tmp/d.dcm")
    url = "s3://idc-open-data-two/s/i.dcm"
    assert s5cmd_argv(url, dest, "aws", binary="s5cmd") == [
        "s5cmd",
        "--no-sign-request",
        "cp",
        url,
        str(dest),
    ]
    assert s5cmd_argv(url, dest, "gcs", binary="s5cmd") == [
        "s5cmd",
        "--no-sign-request",
        "--endpoint-url",
        "https://storage.googleapis.com",
        "cp",
        "s3://idc-open-idc1/s/i.dcm",
        str(dest),
    ]
    assert s5cmd_argv(url, dest, "http://127.0.0.1:9", binary="s5cmd")[2:4] == [
        "--endpoint-url",
        "http://127.0.0.1:9",
    ]
    with pytest.raises(ConfigError, match=r"fetch\.endpoint: got 'ftp://x'"):
        s5cmd_argv(url, dest, "ftp://x", binary="s5cmd")


def test_gcs_keeps_idc_open_data_name() -> None:
    assert source_url("s3://idc-open-data/a/b.dcm", "gcs") == "s3://idc-open-data/a/b.dcm"
    assert source_url("s3://idc-open-data-cr/a/b.dcm", "gcs") == "s3://idc-open-cr/a/b.dcm"
