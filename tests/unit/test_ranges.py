"""The one ranged-read layer: merging, fanning out, one GET as each kind of server answers it, and DICOM headers
read as growing prefixes, each byte once, from rclone directly, behind a proxy, and from a server that ignores
Range."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pandas as pd
import pydicom
import pytest
import pyvips

from slidestock.errors import FetchError, MissingObjectError, RangeNotSupportedError
from slidestock.read.fetch import http_url
from slidestock.read.headers import HeaderReader
from slidestock.read.objectstore import RangeClient
from slidestock.read.ranges import PREFIX_BYTES, Retry, fan_out, http_range, merge, read_header
from slidestock.read.remote import PIXEL_DATA_TAG, RemoteObject, open_instance
from slidestock_testkit import faultproxy, s3server

HEADERS = {"User-Agent": "slidestock-tests"}


@pytest.fixture(scope="module")
def patch_object(patch_build: dict[str, Path]) -> tuple[str, Path]:
    """(s3 URL, local file) of one instance of the patch slides."""
    index = pd.read_parquet(patch_build["index"])[["SeriesInstanceUID", "crdc_series_uuid", "series_aws_url"]]
    row = pd.read_parquet(patch_build["sm_instance_index"]).merge(index, on="SeriesInstanceUID").iloc[0]
    bucket = row.series_aws_url.removeprefix("s3://").split("/")[0]
    key = f"{row.crdc_series_uuid}/{row.crdc_instance_uuid}.dcm"
    return f"s3://{bucket}/{key}", patch_build["s3_root"] / bucket / key


def test_merge_joins_ranges_that_overlap_or_lie_within_the_gap() -> None:
    ranges = [(100, 10), (0, 50), (50, 20), (118, 2), (300, 5), (400, 0)]
    assert merge(ranges, 16) == [(0, 70), (100, 20), (300, 5)]
    assert merge([(0, 10), (27, 3)], 16) == [(0, 10), (27, 3)]  # 17 bytes apart: two requests
    assert merge([(0, 10), (5, 10)], 0) == [(0, 15)]
    assert merge([(100, 10), (0, 50), (60, 10), (10_000_000, 5)], 20) == [(0, 70), (100, 10), (10_000_000, 5)]


def test_fan_out_hands_each_range_its_bytes_from_merged_requests() -> None:
    data = bytes(range(256)) * 64
    asked: list[tuple[int, int]] = []
    lock = threading.Lock()

    def read(offset: int, length: int) -> bytes:
        with lock:
            asked.append((offset, length))
        return data[offset : offset + length]

    ranges = [(4000, 100), (0, 10), (10, 6), (4100, 1), (9000, 0), (12_000, 50)]
    got = fan_out(read, ranges, gap=0, parallel=3)
    assert got.bodies == {r: data[r[0] : r[0] + r[1]] for r in ranges}
    assert sorted(asked) == [(0, 16), (4000, 101), (12_000, 50)]
    assert (got.bytes, got.requests) == (16 + 101 + 50, 3)


def test_one_get_as_each_kind_of_server_answers_it(patch_build, patch_object, patch_proxy) -> None:
    url, local = patch_object
    data = local.read_bytes()
    proxy, _, rules = patch_proxy
    with s3server.serving(patch_build["s3_root"]) as s3:
        # rclone: 200 with the range's Content-Range.
        assert http_range(http_url(url, s3.url), 1000, 64, HEADERS, 10) == (data[1000:1064], 64)
    # The proxy: 206, as AWS and GCS answer.
    assert http_range(http_url(url, proxy.url), 1000, 64, HEADERS, 10) == (data[1000:1064], 64)
    # A server that ignores Range: the whole object, read up to the range for a prefix, refused otherwise.
    rules.write_text(json.dumps([{"match": url.removeprefix("s3://"), "mode": "whole"}]))
    try:
        assert http_range(http_url(url, proxy.url), 1000, 64, HEADERS, 10, whole_ok=True) == (data[1000:1064], 1064)
        with pytest.raises(RangeNotSupportedError, match="answered a Range request with 200"):
            http_range(http_url(url, proxy.url), 1000, 64, HEADERS, 10)
    finally:
        rules.write_text("[]")


def test_retry_waits_double_up_to_a_ceiling() -> None:
    retry = Retry(attempts=8, backoff_s=0.5)
    assert [retry.wait_s(n) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0]


@pytest.fixture(scope="module")
def large_header(patch_object: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The instance rewritten with a large ICC profile (libvips's CMYK profile, 961,644 bytes) in its optical
    path, as some scanners' profiles are: a header past the first two prefixes."""
    cmyk = pyvips.Image.black(2, 2, bands=3).copy(interpretation="srgb").icc_transform("cmyk", input_profile="srgb")
    profile = cmyk.get("icc-profile-data")
    ds = pydicom.dcmread(patch_object[1])
    ds.OpticalPathSequence[0].ICCProfile = profile
    root = tmp_path_factory.mktemp("large-header")
    path = root / patch_object[0].removeprefix("s3://")
    path.parent.mkdir(parents=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_long_header_is_read_as_growing_prefixes_each_byte_once(large_header: Path) -> None:
    data = large_header.read_bytes()
    reads: list[tuple[int, int]] = []

    def read(offset: int, length: int) -> bytes:
        reads.append((offset, length))
        return data[offset : offset + length]

    found = read_header(read, PIXEL_DATA_TAG, "large")
    assert found is not None
    assert found.next_tag == PIXEL_DATA_TAG
    with large_header.open("rb") as fp:
        pydicom.dcmread(fp, stop_before_pixels=True)
        assert found.end == fp.tell() > PREFIX_BYTES[1]
    assert len(found.ds.OpticalPathSequence[0].ICCProfile) == 961_644
    assert reads == [(0, PREFIX_BYTES[0]), (PREFIX_BYTES[0], PREFIX_BYTES[1] - PREFIX_BYTES[0]),
                     (PREFIX_BYTES[1], PREFIX_BYTES[2] - PREFIX_BYTES[1])]  # fmt: skip
    assert found.prefix == data[: PREFIX_BYTES[2]]


def test_plan_and_patches_read_the_header_the_same_way_whatever_the_server(large_header: Path, tmp_path: Path) -> None:
    root = large_header.parents[2]
    url = "s3://" + large_header.relative_to(root).as_posix()
    size = large_header.stat().st_size
    expected = pydicom.dcmread(large_header, stop_before_pixels=True)
    rules = tmp_path / "rules.json"
    whole = [{"match": url.removeprefix("s3://"), "mode": "whole"}]
    with s3server.serving(root) as s3, faultproxy.serving(s3.url, tmp_path / "proxy.log", rules) as proxy:
        # rclone (200 with a Content-Range), the proxy (206), a server that ignores Range (200, the whole object)
        for endpoint, rule in ((s3.url, []), (proxy, []), (proxy, whole)):
            rules.write_text(json.dumps(rule))
            plan = HeaderReader(endpoint, attempts=1)
            ds = plan.dataset(url)
            assert ds is not None
            assert ds.SOPInstanceUID == expected.SOPInstanceUID
            assert plan.requests == 3
            # What arrived: the prefix, once; from a server that ignores Range, each read's skipped start too.
            skipped = PREFIX_BYTES[0] + PREFIX_BYTES[1] if rule else 0
            assert plan.bytes_fetched == PREFIX_BYTES[2] + skipped
            obj = RemoteObject(RangeClient(endpoint, attempts=1), url, size)
            if rule:
                with pytest.raises(FetchError, match="answers a ranged GET as if it were for the whole object"):
                    open_instance(obj, "large")
                continue
            instance = open_instance(obj, "large")
            assert instance.header.icc_profile == bytes(expected.OpticalPathSequence[0].ICCProfile)
            assert instance.header_bytes == obj.fetched == PREFIX_BYTES[2]
            assert obj.requests == 3


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [("aws", None), ("gcs", "https://storage.googleapis.com"), ("http://127.0.0.1:9", "http://127.0.0.1:9")],
)
def test_each_endpoint_names_its_store_and_a_read_fails_only_for_the_network(endpoint: str, expected) -> None:
    """Observed: with fetch.endpoint: aws every ranged read failed at once ('None' is not an instance of 'str'):
    obstore takes no endpoint=None. AWS is obstore's default, named by leaving the endpoint out."""
    client = RangeClient(endpoint, attempts=1, timeout_s=5)
    store = client._store("idc-open-data")
    assert store.config.get("endpoint") == expected
    assert store.config["region"] == "us-east-1"
    # Offline, the read fails to reach the server; online, the made-up key is not found. Never a type error.
    with pytest.raises((FetchError, MissingObjectError)) as failed:
        client.read("s3://idc-open-data/00000000-0000-0000-0000-000000000000/none.dcm", 0, 10)
    assert "not an instance" not in str(failed.value)
    assert str(failed.value).startswith("s3://idc-open-data/00000000-0000-0000-0000-000000000000/none.dcm")
