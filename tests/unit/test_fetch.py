"""s5cmd against a real S3 server on loopback: bytes, size checks, retries, argv, slides handed on as they arrive."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from slidestock.errors import ConfigError, FetchError, MissingObjectError, WrongSizeError
from slidestock.plan.planner import object_url
from slidestock.read.fetch import (
    BatchItem,
    FetchResult,
    check_free_disk,
    check_size,
    command_file_line,
    s5cmd_base,
    source_url,
)
from slidestock.read.stream import Downloads, Group, fetch_batch, may_fly
from slidestock_testkit import faultproxy
from slidestock_testkit.s3server import S3Server


@pytest.fixture(scope="module")
def one_instance(instance_table: pd.DataFrame, demo_build: dict[str, Path]) -> tuple[str, int, Path]:
    """URL, index size and local path of the demo's smallest instance."""
    row = instance_table.sort_values("instance_size").iloc[0]
    index = pd.read_parquet(demo_build["index"]).set_index("SeriesInstanceUID")
    series_uuid = index.loc[row["SeriesInstanceUID"], "crdc_series_uuid"]
    url = object_url("idc-open-data", series_uuid, row["crdc_instance_uuid"])
    local = demo_build["s3_root"] / "idc-open-data" / series_uuid / f"{row['crdc_instance_uuid']}.dcm"
    return url, int(row["instance_size"]), local


def fetch_one(url: str, dest: Path, size: int, endpoint: str, **settings: Any) -> FetchResult:
    """A batch of one object; raises its error."""
    result = fetch_batch([BatchItem(url, dest, size)], endpoint, workers=1, **settings)[dest]
    if isinstance(result, FetchError):
        raise result
    return result


def test_fetch_copies_the_exact_bytes(s3: S3Server, one_instance: tuple[str, int, Path], tmp_path: Path) -> None:
    url, size, original = one_instance
    result = fetch_one(url, tmp_path / "x.dcm", size, s3.url, attempts=1)
    assert result.bytes_fetched == size == original.stat().st_size
    assert (tmp_path / "x.dcm").read_bytes() == original.read_bytes()
    assert result.attempts == 1


def test_wrong_index_size_is_retried_once_and_leaves_nothing(
    s3: S3Server, one_instance: tuple[str, int, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url, size, _ = one_instance
    with pytest.raises(
        WrongSizeError, match=rf"wrong size twice; .*downloaded {size} bytes; expected {size + 1}"
    ) as info:
        fetch_one(url, tmp_path / "x.dcm", size + 1, s3.url, attempts=5, backoff_s=0.01)
    assert info.value.retryable is False  # the object, not the network: permanent for this plan
    assert list(tmp_path.iterdir()) == []
    # One retry after the first wrong size; the second ends it, long before attempt 5.
    assert [m for r in caplog.records if "attempt" in (m := r.getMessage())] == [
        f"fetch {url}: attempt 1/5 failed: {url}: downloaded {size} bytes; expected {size + 1} bytes (instance_size)"
    ]


def test_a_missing_object_fails_for_good_at_once(
    s3: S3Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Observed: a 404 NoSuchKey was called "may pass on a re-run", and every re-run tried it again."""
    url = "s3://idc-open-data/nope/nope.dcm"
    with pytest.raises(MissingObjectError) as info:
        fetch_one(url, tmp_path / "x.dcm", 10, s3.url, attempts=3, backoff_s=0.01)
    assert str(info.value) == (
        f"{url}: not found at {s3.url}: the index names an object the bucket does not hold; a re-run will not "
        "fetch it. Check cohort.idc_version (the index and the bucket disagree), or report the object to IDC "
        "(https://discourse.canceridc.dev)"
    )
    assert info.value.retryable is False
    assert [r for r in caplog.records if "attempt" in r.getMessage()] == []  # not tried again within the run
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
    assert s5cmd_base("aws", binary="s5cmd") == ["s5cmd", "--no-sign-request"]
    assert s5cmd_base("gcs", binary="s5cmd") == [
        "s5cmd",
        "--no-sign-request",
        "--endpoint-url",
        "https://storage.googleapis.com",
    ]
    assert s5cmd_base("http://127.0.0.1:9", binary="s5cmd")[2:] == ["--endpoint-url", "http://127.0.0.1:9"]
    with pytest.raises(ConfigError, match=r"fetch\.endpoint: got 'ftp://x'"):
        s5cmd_base("ftp://x", binary="s5cmd")


def test_command_file_lines_quote_paths_and_rename_gcs_buckets() -> None:
    item = BatchItem("s3://idc-open-data-two/s/i.dcm", Path("/tmp/a b/d.dcm"), 10)
    assert command_file_line(item, "aws") == 'cp "s3://idc-open-data-two/s/i.dcm" "/tmp/a b/d.dcm"'
    assert command_file_line(item, "gcs") == 'cp "s3://idc-open-idc1/s/i.dcm" "/tmp/a b/d.dcm"'
    with pytest.raises(FetchError, match="a quote or line break cannot be passed"):
        command_file_line(BatchItem('s3://b/k".dcm', Path("/tmp/x"), 1), "aws")


def test_gcs_keeps_idc_open_data_name() -> None:
    assert source_url("s3://idc-open-data/a/b.dcm", "gcs") == "s3://idc-open-data/a/b.dcm"
    assert source_url("s3://idc-open-data-cr/a/b.dcm", "gcs") == "s3://idc-open-cr/a/b.dcm"


def test_a_batch_moves_every_object_and_reports_each_failure_alone(
    s3: S3Server, instance_table: pd.DataFrame, demo_build: dict[str, Path], tmp_path: Path
) -> None:
    index = pd.read_parquet(demo_build["index"]).set_index("SeriesInstanceUID")
    rows = instance_table.sort_values("SOPInstanceUID").head(4)
    items = [
        BatchItem(
            object_url("idc-open-data", index.loc[row.SeriesInstanceUID, "crdc_series_uuid"], row.crdc_instance_uuid),
            tmp_path / f"{n}.dcm",
            int(row.instance_size),
        )
        for n, row in enumerate(rows.itertuples())
    ]
    wrong = BatchItem(items[0].url, tmp_path / "wrong.dcm", items[0].expected_bytes - 1)
    missing = BatchItem("s3://idc-open-data/nope/nope.dcm", tmp_path / "missing.dcm", 5)
    outcome = fetch_batch([*items, wrong, missing], s3.url, workers=3, attempts=3, backoff_s=0.01)
    for item in items:
        result = outcome[item.dest]
        assert not isinstance(result, FetchError), result
        assert result.bytes_fetched == item.expected_bytes == item.dest.stat().st_size
    # The same object, expected one byte shorter: wrong size twice, then given up.
    assert re.fullmatch(
        rf"{wrong.url}: wrong size twice; .* expected {wrong.expected_bytes} bytes \(instance_size\): the object is "
        "not the size the index gives, and a re-run will not change it. .*",
        str(outcome[wrong.dest]),
    )
    assert not wrong.dest.exists()
    failed = outcome[missing.dest]
    assert isinstance(failed, MissingObjectError)  # at once: a 404 is the same on every attempt
    assert str(failed).startswith(f"{missing.url}: not found at {s3.url}: the index names an object")
    assert not missing.dest.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.dcm", "1.dcm", "2.dcm", "3.dcm"]


def test_disk_preflight_names_needed_and_free_bytes(tmp_path: Path) -> None:
    check_free_disk(tmp_path, 1, "batch b00000")
    with pytest.raises(
        FetchError,
        match=r"batch b00000: needs 1,000,000,000,000,000,000 bytes of scratch space in .* only [\d,]+ bytes are free",
    ):
        check_free_disk(tmp_path, 10**18, "batch b00000")


def demo_items(instance_table: pd.DataFrame, demo_build: dict[str, Path], folder: Path, n: int) -> list[BatchItem]:
    """The demo's first ``n`` instances (by UID) as batch items into ``folder``."""
    index = pd.read_parquet(demo_build["index"]).set_index("SeriesInstanceUID")
    rows = instance_table.sort_values("SOPInstanceUID").head(n)
    return [
        BatchItem(
            object_url("idc-open-data", index.loc[row.SeriesInstanceUID, "crdc_series_uuid"], row.crdc_instance_uuid),
            folder / f"{k}.dcm",
            int(row.instance_size),
        )
        for k, row in enumerate(rows.itertuples())
    ]


def test_slides_are_handed_on_as_they_arrive_while_a_stalled_one_waits_for_its_retry(
    s3: S3Server, instance_table: pd.DataFrame, demo_build: dict[str, Path], tmp_path: Path
) -> None:
    items = demo_items(instance_table, demo_build, tmp_path, 6)
    stalled = items[0]
    rules = tmp_path / "rules.json"
    # The first request for the stalled object gets no answer; the next attempt's is forwarded.
    rules.write_text(json.dumps([{"match": stalled.url.partition("/idc-open-data/")[2], "mode": "stall", "times": 1}]))
    groups = [Group(f"slide{k}", (item,)) for k, item in enumerate(items)]
    with faultproxy.serving(s3.url, tmp_path / "proxy.log", rules) as proxy:
        downloads = Downloads(groups, proxy, window=6, workers=4, attempts=2, backoff_s=0.01, timeout_s=3)
        order, stopped = [], []
        for group, outcomes in downloads:
            order.append(group.key)
            # Whether the stalled attempt had been cut off when this slide was handed on.
            stopped.append(len(faultproxy.sent(tmp_path / "proxy.log", stalled.url.rsplit("/", 1)[1])) > 0)
            downloads.release(group)
            result = outcomes[group.items[0].dest]
            assert isinstance(result, FetchResult), result
            assert result.bytes_fetched == group.items[0].expected_bytes == group.items[0].dest.stat().st_size
    # The five others came through the first attempt while the stalled object hung; it came last, on the second.
    assert order[-1] == "slide0"
    assert sorted(order[:-1]) == [f"slide{k}" for k in range(1, 6)]
    assert stopped == [False] * 5 + [True]
    assert stalled.dest.read_bytes() == (demo_build["s3_root"] / stalled.url.removeprefix("s3://")).read_bytes()


def test_no_more_than_the_window_of_slides_is_on_disk_and_a_missing_object_fails_only_its_slide(
    s3: S3Server, instance_table: pd.DataFrame, demo_build: dict[str, Path], tmp_path: Path
) -> None:
    items = demo_items(instance_table, demo_build, tmp_path, 10)
    missing = BatchItem("s3://idc-open-data/nope/nope.dcm", tmp_path / "missing.dcm", 5)
    # Slides of two objects and of one (a concatenation's parts, a label), one with a missing object.
    groups = [Group(f"s{k}", tuple(items[k : k + 2])) for k in range(0, 6, 2)]
    groups += [Group(f"s{k}", (item,)) for k, item in enumerate(items[6:], start=6)]
    groups.append(Group("broken", (BatchItem(items[0].url, tmp_path / "x.dcm", items[0].expected_bytes), missing)))
    downloads = Downloads(groups, s3.url, window=2, workers=4, attempts=2, backoff_s=0.01)
    on_disk, seen = [], {}
    for group, outcomes in downloads:
        on_disk.append(len([p for p in tmp_path.iterdir() if p.suffix == ".dcm"]))
        seen[group.key] = outcomes
        for item in group.items:  # decoded: its files go, its place is freed
            item.dest.unlink(missing_ok=True)
        downloads.release(group)
    assert sorted(seen) == sorted(group.key for group in groups)
    # Two slides of at most two objects each: never more than four files.
    assert max(on_disk) <= 4
    for group in groups[:-1]:
        for item in group.items:
            result = seen[group.key][item.dest]
            assert isinstance(result, FetchResult), result
            assert result.bytes_fetched == item.expected_bytes
    assert isinstance(seen["broken"][missing.dest], MissingObjectError)
    assert isinstance(seen["broken"][tmp_path / "x.dcm"], FetchResult)


def test_a_run_starts_with_two_objects_in_flight_and_adds_one_per_answer() -> None:
    """Sixteen objects sharing a 100 Mb/s link from the start each took 1.6 s to land (1.25 MB each): the
    decoder waited that long for its first slide. Two at first land in 0.2 s; the run widens as they do."""
    assert may_fly(0, 0, 1, 16)
    assert may_fly(0, 0, 5, 16)  # a slide of five parts goes whole when nothing flies
    assert may_fly(1, 0, 1, 16)
    assert not may_fly(2, 0, 1, 16)
    assert may_fly(2, 1, 1, 16)
    assert may_fly(15, 14, 1, 16)
    assert not may_fly(16, 100, 1, 16)  # never more than the workers
    assert not may_fly(3, 2, 2, 16)
