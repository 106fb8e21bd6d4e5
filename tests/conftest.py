"""Shared fixtures: the generated demo slides and a real S3 server on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from slidestock_testkit import faultproxy, fixtures, s3server, slides, svsfiles

REPO = Path(__file__).resolve().parents[1]
# The demo's fixture folder doubles as the tests' cache: fixtures.build reuses
# it when the specification is unchanged, and rebuilds it otherwise.
FIXTURES = REPO / "resources" / "demo" / "build"


@pytest.fixture(scope="session")
def demo_build() -> dict[str, Path]:
    return fixtures.build(FIXTURES)


@pytest.fixture(scope="session")
def instance_table(demo_build: dict[str, Path]) -> pd.DataFrame:
    return pd.read_parquet(demo_build["sm_instance_index"])


@pytest.fixture(scope="session")
def s3(demo_build: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[s3server.S3Server]:
    log = tmp_path_factory.mktemp("rclone") / "rclone.log"
    with s3server.serving(demo_build["s3_root"], log_path=log) as server:
        yield server


@pytest.fixture(scope="session")
def gdc_build() -> dict[str, Path]:
    return svsfiles.build_gdc(FIXTURES / "gdc")


@pytest.fixture(scope="session")
def edge_build() -> dict[str, Path]:
    """Awkward slides (TILED_SPARSE, uncompressed, spacing on the base only) in their own tables."""
    return fixtures.build(FIXTURES / "edge", slides.EDGE_SLIDES)


@pytest.fixture(scope="session")
def fidelity_build() -> dict[str, Path]:
    """Slides shaped like what users bring: a TCGA pyramid with rounded index spacings, a one-level slide."""
    return fixtures.build(FIXTURES / "fidelity", slides.FIDELITY_SLIDES)


@pytest.fixture(scope="session")
def fidelity_svs() -> dict[str, Path]:
    """The one-level fidelity slide's pixels as a GDC SVS file, with its manifest."""
    return svsfiles.build_gdc(FIXTURES / "fidelity-gdc", (svsfiles.FIDELITY_SVS,))


@pytest.fixture(scope="session")
def patch_build() -> dict[str, Path]:
    """One slide per way of locating frames without the level: BOT, EOT, a TIFF directory, none."""
    return fixtures.build(FIXTURES / "patches", slides.PATCH_SLIDES)


@pytest.fixture(scope="module")
def patch_proxy(
    patch_build: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[s3server.S3Server, Path, Path]]:
    """rclone serving the patch slides behind the proxy (ranged answers as 206, each logged), one per test module.

    Yields the proxy as an S3Server (its URL, rclone's PID), its log and its rules file (empty: it forwards).
    """
    folder = tmp_path_factory.mktemp("proxy")
    log, rules = folder / "proxy.log", folder / "rules.json"
    rules.write_text("[]")
    with s3server.serving(patch_build["s3_root"]) as s3, faultproxy.serving(s3.url, log, rules) as url:
        yield s3server.S3Server(url, s3.pid), log, rules
