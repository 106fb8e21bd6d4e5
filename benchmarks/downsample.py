"""Downsample speed and memory: slidestock against OpenSlide's get_thumbnail and the decode floor.

Usage: python benchmarks/downsample.py [--size 12000x9000] [--target-um 15] [--repeat 3]
       python benchmarks/downsample.py --large [--size 40000x40000] [--target-um 15]

One level file (a single-instance DICOM WSI of JPEG tiles) is generated, then
each contender runs in its own process, on the same file, to the same output
size, and its best wall time and peak RSS are kept:
  floor           decode every frame at full size (libjpeg-turbo through Pillow), one thread, nothing else
  floor shrunk    decode every frame at the DCT scale slidestock uses, one thread, nothing else
  slidestock 1    read_level (streaming, shrink-on-decode, Lanczos-3 across then down) + PNG, one thread
  slidestock N    the same on every core
  slidestock backend openslide
                  target.backend openslide: OpenSlide read_region in bands of tile rows, Lanczos-3, PNG
  openslide       OpenSlide(file).get_thumbnail(size) + PNG (single-threaded by design)
  floor SVS shrunk, slidestock SVS page 1 / N, openslide SVS
                  the same for the level's pixels as the base page of an SVS (libvips' tiled JPEG TIFF), as
                  the GDC path reads it (from a local file here)
By default the level is 12,000 x 9,000 px at 1 µm/px (the demo's tissue
generator). With --large it is a single-level slide at 0.25 µm/px, 40,000 px
a side by default, written tile by tile (about 0.7 GB of JPEG); OpenSlide is
left out there unless --openslide is given (it reads the whole level into
memory, 4 bytes a pixel). Prints a table and writes it to
benchmarks/results/downsample.md (or downsample-large.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow" / "scripts"))
sys.path.insert(0, str(REPO / "testkit"))

FLOOR = """
import io, math
from PIL import Image
from slidestock.read.local import read_frame, read_header
from slidestock.image.reduce import JPEG, plan_decode
header = read_header(Path(SRC))
decode = plan_decode(JPEG, SCALE, header.tile_px, header.size_px) if SHRUNK else 1
for frame in header.grid:
    with Image.open(io.BytesIO(read_frame(header.path, frame, "bench"))) as picture:
        picture.draft("RGB", (picture.width // decode, picture.height // decode))
        picture.load()
"""
FLOOR_SVS = """
from slidestock.read.svs import PageTiles, choose_page, decode_tile
from slidestock.plan.levels import Target
from slidestock.image.reduce import JPEG, plan_decode
handle = open(SVS, "rb")
def read(offset, length):
    handle.seek(offset)
    return handle.read(length)
page = choose_page(read, Target(mpp=0.25), "bench").page
tiles = PageTiles(page, read, lambda ranges: [read(o, n) for o, n in ranges], "bench")
decode = plan_decode(JPEG, SCALE, page.tile_px, page.size_px)
for index, (offset, length) in enumerate(tiles.locations):
    decode_tile(page, read(offset, length), "bench", index, decode)
"""
SLIDESTOCK = """
from slidestock.image.reduce import read_level
from slidestock.image.output import write_image
level = read_level(Path(SRC), out_px=SIZE, threads=THREADS)
write_image(level.image, Path(OUT) / "s.png", (15.0, 15.0))
"""
SVS_PAGE = """
from slidestock.image.output import write_image
from slidestock.read.svs import PageTiles, choose_page, reduce_page
from slidestock.plan.levels import Target
handle = open(SVS, "rb")
def read(offset, length):
    handle.seek(offset)
    return handle.read(length)
chosen = choose_page(read, Target(mpp=0.25), "bench")
tiles = PageTiles(chosen.page, read, lambda ranges: [read(o, n) for o, n in ranges], "bench")
write_image(reduce_page(tiles, SIZE, threads=THREADS).image, Path(OUT) / "v.png", (15.0, 15.0))
"""
BACKEND_OPENSLIDE = """
from slidestock.read.local import read_header
from slidestock.image.output import write_image
from slidestock.image.reduce import openslide_reduced
header = read_header(Path(SRC))
reduced = openslide_reduced(Path(SRC), header.size_px, header.tile_px[1], SIZE)
write_image(reduced.image, Path(OUT) / "b.png", (15.0, 15.0))
"""
OPENSLIDE = """
import openslide
openslide.OpenSlide(SRC).get_thumbnail(SIZE).save(OUT + "/o.png")
"""
OPENSLIDE_SVS = """
import openslide
openslide.OpenSlide(SVS).get_thumbnail(SIZE).save(OUT + "/p.png")
"""
# The contender's own peak RSS (VmHWM, kB); ru_maxrss would include the parent's RSS at fork, which exec keeps.
PEAK = """
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""
CONTENDERS = {
    "floor": (FLOOR, {"SHRUNK": False}),
    "floor shrunk": (FLOOR, {"SHRUNK": True}),
    "slidestock 1": (SLIDESTOCK, {"THREADS": 1}),
    f"slidestock {os.cpu_count()}": (SLIDESTOCK, {"THREADS": os.cpu_count() or 1}),
    "slidestock backend openslide": (BACKEND_OPENSLIDE, {}),
    "openslide": (OPENSLIDE, {}),
    "floor SVS shrunk": (FLOOR_SVS, {}),
    "slidestock SVS page 1": (SVS_PAGE, {"THREADS": 1}),
    f"slidestock SVS page {os.cpu_count()}": (SVS_PAGE, {"THREADS": os.cpu_count() or 1}),
    "openslide SVS": (OPENSLIDE_SVS, {}),
}


def make_level(folder: Path, size: tuple[int, int], large: bool) -> tuple[Path, Path]:
    """The level as a DICOM file, and the same tiles as the base page of an SVS (libvips' tiled TIFF, JPEG Q90)."""
    import pyvips

    from slidestock.image.reduce import reduce_level
    from slidestock_testkit import dicomseries, slides

    if large:
        dicom = dicomseries.write_large_level(folder / "level.dcm", size, seed=7).path
    else:
        spec = slides.SlideSpec("bench", "BENCH", "BENCH-01", size, base_spacing_um=1.0, n_levels=1, seed=7)
        record = dicomseries.write_series(spec, folder)
        dicom = next((folder / slides.BUCKET / record.crdc_series_uuid).glob("*.dcm"))
    svs = folder / "page.svs"
    # The level's own pixels (decoded in rows, never whole) as one tiled JPEG page, without a pyramid.
    from slidestock.read.local import read_header

    image: pyvips.Image = reduce_level(read_header(dicom)).image if not large else _large_image(dicom)
    image.set_type(pyvips.GValue.gstr_type, "image-description", f"Aperio bench |MPP = {0.25 if large else 1.0}")
    image.tiffsave(str(svs), tile=True, tile_width=256, tile_height=256, compression="jpeg", Q=90, bigtiff=True)
    return dicom, svs


def _large_image(dicom: Path) -> pyvips.Image:  # noqa: F821 (pyvips imported where used)
    """A large single-level DICOM as a pyvips image libvips can stream to a TIFF: its frames, joined lazily."""
    import pyvips

    from slidestock.read.local import read_frame, read_header

    header = read_header(dicom)
    tiles = [pyvips.Image.jpegload_buffer(read_frame(dicom, frame, "bench")) for frame in header.grid if frame]
    joined = pyvips.Image.arrayjoin(tiles, across=header.across)
    return joined.crop(0, 0, *header.size_px)


def one(name: str, src: str, svs: str, size: str, scale: str, repeat: str) -> None:
    """Run one contender ``repeat`` times in fresh interpreters; print best seconds and peak RSS as JSON."""
    code, extra = CONTENDERS[name]
    width, height = (int(v) for v in size.split("x"))
    settings = {"SRC": src, "SVS": svs, "SIZE": (width, height), "SCALE": float(scale), **extra}
    times, peaks = [], []
    with tempfile.TemporaryDirectory() as out:
        prelude = "from pathlib import Path\n" + "".join(f"{k} = {v!r}\n" for k, v in {**settings, "OUT": out}.items())
        for _ in range(int(repeat)):
            start = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-c", prelude + code + PEAK],
                check=True,
                capture_output=True,
                text=True,
                env={"PYTHONPATH": str(REPO / "workflow" / "scripts"), "PATH": os.environ.get("PATH", "")},
            )
            times.append(time.perf_counter() - start)
            peaks.append(int(done.stdout.split()[-1]) / 1024)
    print(json.dumps({"seconds": min(times), "rss_mb": max(peaks)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", help="columns x rows of the level (12000x9000; 40000x40000 with --large)")
    parser.add_argument("--target-um", type=float, default=15.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--large", action="store_true", help="a single-level 0.25 µm/px slide written tile by tile")
    parser.add_argument("--openslide", action="store_true", help="with --large, run OpenSlide too")
    args = parser.parse_args()
    width, height = (int(v) for v in (args.size or ("40000x40000" if args.large else "12000x9000")).split("x"))
    spacing = 0.25 if args.large else 1.0
    out_size = (round(width * spacing / args.target_um), round(height * spacing / args.target_um))
    scale = max(out_size[0] / width, out_size[1] / height)
    names = [n for n in CONTENDERS if not n.startswith("openslide") or not args.large or args.openslide]
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        src, svs = make_level(Path(folder), (width, height), args.large)
        made = time.perf_counter() - started
        file_mb = src.stat().st_size / 1e6
        results = {}
        # Peak RSS of children is a running maximum, so each contender is measured from its own process.
        for name in names:
            sizes = (f"{out_size[0]}x{out_size[1]}", str(scale), str(args.repeat))
            probe = subprocess.run(
                [sys.executable, __file__, "--one", name, str(src), str(svs), *sizes],
                check=True,
                capture_output=True,
                text=True,
            )
            results[name] = json.loads(probe.stdout)
    floor = results["floor"]["seconds"]
    lines = [
        f"# downsample: one {width} x {height} px level (JPEG tiles, {spacing} µm/px, {file_mb:.0f} MB file, "
        f"written in {made:.0f} s) to {out_size[0]} x {out_size[1]} px",
        "",
        f"Best of {args.repeat} runs, each in a fresh interpreter (imports included); {os.cpu_count()} cores.",
        "",
        "| contender | best wall s | vs floor | peak RSS MB |",
        "|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(f"| {name} | {r['seconds']:.2f} | {r['seconds'] / floor:.2f}x | {r['rss_mb']:.0f} |")
    lines.append("")
    cores = os.cpu_count()
    single, multi = results["slidestock 1"]["seconds"], results[f"slidestock {cores}"]["seconds"]
    page, page_multi = results["slidestock SVS page 1"]["seconds"], results[f"slidestock SVS page {cores}"]["seconds"]
    if "openslide" in results:
        thumb, svs_thumb = results["openslide"]["seconds"], results["openslide SVS"]["seconds"]
        lines.append(
            f"OpenSlide get_thumbnail / slidestock: DICOM level {thumb / single:.2f}x on one thread, "
            f"{thumb / multi:.2f}x on {cores}; SVS page {svs_thumb / page:.2f}x on one thread, "
            f"{svs_thumb / page_multi:.2f}x on {cores} (get_thumbnail is single-threaded)."
        )
    shrunk, svs_shrunk = results["floor shrunk"]["seconds"], results["floor SVS shrunk"]["seconds"]
    lines.append(
        f"slidestock on one thread / decoding the tiles at its DCT scale: DICOM level {single / shrunk:.2f}x, "
        f"SVS page {page / svs_shrunk:.2f}x."
    )
    text = "\n".join(lines) + "\n"
    print(text)
    name = "downsample-large.md" if args.large else "downsample.md"
    (REPO / "benchmarks" / "results" / name).write_text(text)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        one(*sys.argv[2:8])
    else:
        main()
