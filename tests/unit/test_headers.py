"""Instance headers read by range from a real S3 server on loopback (rclone), as the plan reads them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pydicom
import pytest

from slidestock.errors import FetchError, UnreachableError
from slidestock.plan.planner import object_url
from slidestock.read.dicom import header_spacing_um
from slidestock.read.fetch import http_url
from slidestock.read.headers import SHARED_GROUPS, HeaderReader
from slidestock.read.ranges import PREFIX_BYTES, parse_header
from slidestock_testkit import faultproxy
from slidestock_testkit.s3server import S3Server, free_port


@pytest.fixture(scope="module")
def instances(instance_table: pd.DataFrame, demo_build: dict[str, Path]) -> list[tuple[str, Path]]:
    """(URL, local file) of every demo instance."""
    index = pd.read_parquet(demo_build["index"]).set_index("SeriesInstanceUID")
    found = []
    for row in instance_table.itertuples():
        series = index.loc[row.SeriesInstanceUID, "crdc_series_uuid"]
        local = demo_build["s3_root"] / "idc-open-data" / series / f"{row.crdc_instance_uuid}.dcm"
        found.append((object_url("idc-open-data", series, row.crdc_instance_uuid), local))
    return found


def test_http_url_of_each_endpoint() -> None:
    url = "s3://idc-open-data-two/abc/def.dcm"
    assert http_url(url, "aws") == "https://idc-open-data-two.s3.amazonaws.com/abc/def.dcm"
    assert http_url(url, "gcs") == "https://storage.googleapis.com/idc-open-idc1/abc/def.dcm"
    assert http_url(url, "http://127.0.0.1:9000/") == "http://127.0.0.1:9000/idc-open-data-two/abc/def.dcm"


def test_header_spacing_read_by_range_equals_the_file(instances: list[tuple[str, Path]], s3: S3Server) -> None:
    reader = HeaderReader(s3.url, attempts=1)
    for url, local in instances:
        expected = header_spacing_um(pydicom.dcmread(local, stop_before_pixels=True))
        assert reader.spacing_xy_um(url) == expected
    # One ranged GET per instance, of at most the first prefix: never the level's frames.
    assert reader.requests == len(instances)
    assert reader.bytes_fetched == sum(min(PREFIX_BYTES[0], local.stat().st_size) for _, local in instances)
    assert reader.bytes_fetched < sum(local.stat().st_size for _, local in instances) / 10


def test_a_prefix_that_ends_inside_the_header_is_incomplete(instances: list[tuple[str, Path]]) -> None:
    data = instances[0][1].read_bytes()
    assert parse_header(data[:600], SHARED_GROUPS + 1) is None
    complete = parse_header(data[: PREFIX_BYTES[0]], SHARED_GROUPS + 1)
    assert complete is not None
    assert "SharedFunctionalGroupsSequence" in complete.ds
    assert complete.next_tag is not None
    assert complete.next_tag > SHARED_GROUPS


def test_missing_object_fails_that_slide_and_a_closed_port_is_unreachable(
    instances: list[tuple[str, Path]], s3: S3Server
) -> None:
    missing = instances[0][0].replace(".dcm", "-missing.dcm")
    with pytest.raises(FetchError, match=r"header of .*-missing\.dcm: HTTP 404") as err:
        HeaderReader(s3.url, attempts=1).spacing_xy_um(missing)
    assert not isinstance(err.value, UnreachableError)
    closed = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(UnreachableError, match=r"header of .*: 2 attempts failed; last: URLError"):
        HeaderReader(closed, attempts=2, backoff_s=0.01).spacing_xy_um(instances[0][0])


def test_reachability_is_one_head_of_the_batchs_own_object(
    instances: list[tuple[str, Path]], s3: S3Server, tmp_path: Path
) -> None:
    # Observed: a listing of the bucket, which rclone answers by reading every object (16 s on a fixture).
    url = instances[0][0]
    key = url.removeprefix("s3://")
    with faultproxy.serving(s3.url, tmp_path / "proxy.log") as proxy:
        reader = HeaderReader(proxy, attempts=1)
        reader.check_reachable(url)
        reader.check_reachable(url.replace(key.rsplit("/", 1)[1], "no-such-object.dcm"))  # a 404 is an answer
    said = (tmp_path / "proxy.log").read_text().splitlines()
    asked = [line for line in said if line.endswith(" forward") and line != "GET / forward"]  # not the proxy's start
    assert asked == [f"HEAD /{key} forward", f"HEAD /{key.rsplit('/', 1)[0]}/no-such-object.dcm forward"]
    assert reader.requests == reader.bytes_fetched == 0
    closed = HeaderReader(f"http://127.0.0.1:{free_port()}", attempts=2, backoff_s=0.01)
    with pytest.raises(UnreachableError, match=rf"object http://127\.0\.0\.1:\d+/{key}: 2 attempts failed; last: URLE"):
        closed.check_reachable(url)
