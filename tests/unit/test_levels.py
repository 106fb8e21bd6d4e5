"""The level rule and the output-size arithmetic."""

from __future__ import annotations

from dataclasses import replace

import pytest

from slidestock.errors import ConfigError, LevelError
from slidestock.plan.levels import (
    Level,
    Target,
    choose_level,
    level_spacings,
    output_size_px,
    rounding_interval,
    volume_levels,
)

VOLUME = ("DERIVED", "PRIMARY", "VOLUME", "NONE")


def level(uid: str, size: tuple[int, int], spacing: float | None, flavor: str = "VOLUME") -> Level:
    image_type = ("ORIGINAL", "PRIMARY", flavor, "NONE")
    return Level(uid, f"uuid-{uid}", image_type, size, spacing, "1.2.840.10008.1.2.4.50", size[0] * 10)


# A TCGA-like pyramid: sizes are not exact powers of four.
PYRAMID = [
    level("l0", (40000, 30000), 0.25),
    level("l1", (10000, 7500), 1.0),
    level("l2", (2500, 1875), 4.0),
    level("l3", (625, 468), 16.0),
]


def test_picks_coarsest_level_not_coarser_than_target() -> None:
    choice = choose_level(PYRAMID, Target(mpp=15.0))
    assert choice.level.sop_instance_uid == "l2"
    assert choice.output_size_px == (667, 500)  # 2500 * 4 / 15 = 666.67, 1875 * 4 / 15 = 500
    assert choice.spacing_um == 4.0


def test_target_equal_to_an_exact_level_takes_that_level_unscaled() -> None:
    exact = [replace(lv, spacing_exact=True) for lv in PYRAMID]
    choice = choose_level(exact, Target(mpp=16.0))
    assert choice.level.sop_instance_uid == "l3"
    assert choice.output_size_px == (625, 468)
    assert choice.scale == 1.0


def test_rounding_interval_of_two_significant_figures() -> None:
    assert rounding_interval(8.0) == pytest.approx((7.95, 8.05))
    assert rounding_interval(16.0) == pytest.approx((15.5, 16.5))
    assert rounding_interval(0.25) == pytest.approx((0.245, 0.255))
    assert rounding_interval(0.2527) == (0.2527, 0.2527)  # four figures: not rounded


# TCGA: a 0.2527 µm base in 4.002x steps; idc-index publishes 0.00025 / 0.001 / 0.004 / 0.016 mm.
TCGA_HEADERS = {"t0": 0.2527, "t1": 1.0108, "t2": 4.0471, "t3": 16.19}
TCGA = [
    level("t0", (100000, 80000), 0.25),
    level("t1", (25000, 20000), 1.0),
    level("t2", (6244, 4995), 4.0),
    level("t3", (1561, 1248), 16.0),
]


@pytest.mark.parametrize(
    ("mpp", "chosen", "read"),
    [(4.0, "t1", ["t2", "t1"]), (16.0, "t2", ["t3", "t2"]), (8.0, "t2", ["t2"]), (17.0, "t3", ["t3"])],
)
def test_rounded_index_spacings_are_settled_by_the_header(mpp: float, chosen: str, read: list[str]) -> None:
    asked: list[str] = []

    def header(lv: Level) -> tuple[float, float]:
        asked.append(lv.sop_instance_uid)
        return (TCGA_HEADERS[lv.sop_instance_uid],) * 2

    choice = choose_level(TCGA, Target(mpp=mpp), header_spacing=header)
    assert choice.level.sop_instance_uid == chosen
    assert asked == read  # the straddling level, then the chosen one; nothing else
    assert choice.spacing_source == "header"
    assert choice.spacing_um == TCGA_HEADERS[chosen]
    assert choice.spacing_um <= mpp
    # Without a reader a straddling level counts as too coarse: never coarser than the target.
    assert choose_level(TCGA, Target(mpp=mpp)).spacing_um <= mpp


def test_header_spacing_fills_an_index_without_one() -> None:
    # b's spacing derived from a's rounded 0.25 µm is 1.0 +- 0.02 µm: its header settles it.
    levels = [level("a", (4000, 3000), 0.25), level("b", (1000, 750), None)]
    headers = {"a": (0.2505, 0.2505), "b": (1.002, 1.002)}
    choice = choose_level(levels, Target(mpp=1.01), header_spacing=lambda lv: headers[lv.sop_instance_uid])
    assert (choice.level.sop_instance_uid, choice.spacing_source, choice.spacing_um) == ("b", "header", 1.002)


def test_order_of_levels_does_not_matter() -> None:
    assert choose_level(reversed(PYRAMID), Target(mpp=3.0)).level.sop_instance_uid == "l1"


@pytest.mark.parametrize("flavor", ["LABEL", "OVERVIEW", "THUMBNAIL"])
def test_non_volume_instances_are_never_chosen(flavor: str) -> None:
    # This instance's spacing equals the target exactly: it would win if it qualified.
    decoy = level("decoy", (1000, 800), 15.0, flavor)
    choice = choose_level([*PYRAMID, decoy], Target(mpp=15.0))
    assert choice.level.sop_instance_uid == "l2"
    assert choose_level([*PYRAMID, decoy], Target(max_px=900)).level.sop_instance_uid == "l2"


def test_never_upsamples_when_base_is_coarser_than_target() -> None:
    coarse = [level("c0", (3000, 2000), 8.0), level("c1", (750, 500), 32.0)]
    choice = choose_level(coarse, Target(mpp=2.0))
    assert choice.level.sop_instance_uid == "c0"
    assert choice.output_size_px == (3000, 2000)
    assert "never upsample" in choice.reason


def test_max_px_takes_smallest_level_at_least_that_long() -> None:
    choice = choose_level(PYRAMID, Target(max_px=2048))
    assert choice.level.sop_instance_uid == "l2"
    assert choice.output_size_px == (2048, 1536)  # 1875 * 2048 / 2500 = 1536


def test_max_px_larger_than_base_outputs_base_as_is() -> None:
    choice = choose_level(PYRAMID[2:], Target(max_px=5000))
    assert choice.level.sop_instance_uid == "l2"
    assert choice.output_size_px == (2500, 1875)


def test_missing_spacing_is_derived_from_size_ratio() -> None:
    levels = [
        level("a", (40000, 30000), 0.25),
        level("b", (10010, 7500), None),
        level("c", (2500, 1875), None),
    ]
    spacings = [sp for sp in level_spacings(volume_levels(levels)) if sp is not None]
    assert [(sp.um, sp.source == "derived") for sp in spacings] == [
        (0.25, False),
        (0.25 * 40000 / 10010, True),
        (4.0, True),
    ]
    choice = choose_level(levels, Target(mpp=15.0))
    assert choice.level.sop_instance_uid == "c"
    assert choice.spacing_derived
    assert "derived" in choice.reason


def test_no_spacing_at_all_is_a_level_error_naming_the_slide_and_the_option() -> None:
    levels = [level("a", (4000, 3000), None), level("b", (1000, 750), None)]
    with pytest.raises(
        LevelError,
        match=r"slide-7: no pixel spacing on any of its levels; expected one to reach 15 µm/px "
        r"\(or set target.fallback_max_px",
    ):
        choose_level(levels, Target(mpp=15.0), slide="slide-7")


def test_no_spacing_at_all_falls_back_to_max_px_when_configured() -> None:
    levels = [level("a", (4000, 3000), None), level("b", (1000, 750), None), level("c", (250, 188), None)]
    choice = choose_level(levels, Target(mpp=15.0, fallback_max_px=800), slide="slide-7")
    assert choice.level.sop_instance_uid == "b"
    assert choice.output_size_px == (800, 600)
    assert choice.spacing_um is None
    assert choice.reason == (
        "none of its 3 VOLUME levels has a pixel spacing: sized by target.fallback_max_px; "
        "smallest of 3 VOLUME levels with long side >= 800 px (1000 px)"
    )
    # A level with a spacing anywhere: the fallback is not used.
    levels[0] = level("a", (4000, 3000), 0.25)
    assert choose_level(levels, Target(mpp=15.0, fallback_max_px=800)).output_size_px == (67, 50)
    # max_px targets need no spacing and no fallback.
    assert choose_level(levels[1:], Target(max_px=800)).output_size_px == (800, 600)


@pytest.mark.parametrize(("mpp", "max_px", "fallback"), [(None, 800, 800), (15.0, None, 0)])
def test_fallback_max_px_goes_with_mpp_only(mpp: float | None, max_px: int | None, fallback: int) -> None:
    with pytest.raises(ConfigError, match=rf"target.fallback_max_px: got {fallback} with mpp={mpp}; expected null"):
        Target(mpp=mpp, max_px=max_px, fallback_max_px=fallback)


def test_no_volume_is_a_level_error() -> None:
    with pytest.raises(LevelError, match="no VOLUME instance"):
        choose_level([level("x", (500, 500), 15.0, "LABEL")], Target(mpp=15.0))


def test_tie_between_two_volumes_breaks_on_uid() -> None:
    twins = [level("b-twin", (2500, 1875), 4.0), level("a-twin", (2500, 1875), 4.0)]
    assert choose_level(twins, Target(mpp=15.0)).level.sop_instance_uid == "a-twin"


def test_output_size_rounds_half_up_and_scales_axes_independently() -> None:
    assert output_size_px((512, 384), (4.00390625, 4.00390625), Target(mpp=15.0)) == (137, 103)
    assert output_size_px((100, 100), (2.0, 4.0), Target(mpp=8.0)) == (25, 50)
    assert output_size_px((3, 3), (1.0, 1.0), Target(mpp=2.0)) == (2, 2)  # 1.5 rounds up
    assert output_size_px((10, 10), (1.0, 1.0), Target(mpp=1000.0)) == (1, 1)


@pytest.mark.parametrize(
    ("mpp", "max_px", "message"),
    [(15.0, 100, "exactly one"), (None, None, "exactly one"), (0.0, None, "> 0"), (None, 0, ">= 1")],
)
def test_target_rejects_bad_combinations(mpp: float | None, max_px: int | None, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Target(mpp=mpp, max_px=max_px)


def test_tie_is_recorded_in_the_reason() -> None:
    twins = [level("b-twin", (2500, 1875), 4.0), level("a-twin", (2500, 1875), 4.0), PYRAMID[0]]
    choice = choose_level(twins, Target(mpp=15.0))
    assert choice.reason.endswith("; 2 VOLUME instances of this size, took the first by SOPInstanceUID")
    assert "VOLUME instances of this size" not in choose_level(PYRAMID, Target(mpp=15.0)).reason


def test_a_spacing_derived_from_a_rounded_one_keeps_its_uncertainty() -> None:
    # b has no index spacing; derived from a's rounded 0.25 µm it is 0.999 +- 0.02 µm, which straddles 1.0.
    levels = [level("a", (40000, 30000), 0.25), level("b", (10010, 7500), None)]
    asked: list[str] = []

    def header(lv: Level) -> tuple[float, float]:
        asked.append(lv.sop_instance_uid)
        return {"a": (0.2527, 0.2527), "b": (1.0098, 1.0098)}[lv.sop_instance_uid]

    choice = choose_level(levels, Target(mpp=1.0), header_spacing=header)
    assert asked[0] == "b"  # read because its derived value could not decide
    assert choice.level.sop_instance_uid == "a"  # b is truly 1.0098 µm, coarser than the target
    # Without a reader it counts as too coarse: never a level coarser than the target.
    assert choose_level(levels, Target(mpp=1.0)).level.sop_instance_uid == "a"
