"""Downsample speed and memory: slidestock against OpenSlide's get_thumbnail and the decode floor.

Usage: python benchmarks/downsample.py [--size 12000x9000] [--target-um 15] [--repeat 3]

One level file (a single-instance DICOM WSI, JPEG tiles, 1 µm/px) is generated,
then each contender runs in its own process, on the same file, to the same
output size:
  slidestock   read_level (JPEG shrink-on-decode) + resize_exact (pyvips, Lanczos) + PNG write
  openslide    OpenSlide(file).get_thumbnail(size) + PNG write (PIL)
  floor        decode every frame (libjpeg through libvips) and nothing else
Prints a table (best wall time of --repeat, peak RSS) and writes it to
benchmarks/results/downsample.md. Ratios are against this run's own numbers.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow" / "scripts"))

CODE = {
    "slidestock": """
from pathlib import Path
from slidestock.dicomlevel import read_level
from slidestock.downsample import resize_exact, write_image
from slidestock.dicomlevel import decode_shrink
level = read_level(Path(SRC), shrink=decode_shrink("1.2.840.10008.1.2.4.50", SIZE[0] / WIDTH))
write_image(resize_exact(level.image, SIZE), Path(OUT) / "s.png", (15.0, 15.0))

""",
    "openslide": """
import openslide
openslide.OpenSlide(SRC).get_thumbnail(SIZE).save(OUT + "/o.png")
""",
    "floor": """
import pydicom, pyvips
from pydicom.encaps import generate_frames
ds = pydicom.dcmread(SRC)
for frame in generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)):
    pyvips.Image.jpegload_buffer(frame).avg()
""",
}


def make_level(folder: Path, size: tuple[int, int]) -> Path:
    from slidestock import synthetic

    spec = synthetic.SlideSpec("bench", "BENCH", "BENCH-01", size, base_spacing_um=1.0, n_levels=1, seed=7)
    record = synthetic.write_series(spec, folder)
    return next((folder / synthetic.BUCKET / record.crdc_series_uuid).glob("*.dcm"))


def run(name: str, src: Path, size: tuple[int, int], out: Path, width: int) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one contender in a fresh process."""
    code = f"SRC={str(src)!r}; SIZE={size!r}; OUT={str(out)!r}; WIDTH={width}\n" + CODE[name]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": str(REPO / "workflow" / "scripts")})
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return seconds, max(peak, before) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="12000x9000")
    parser.add_argument("--target-um", type=float, default=15.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    out_size = (round(width / args.target_um), round(height / args.target_um))
    with tempfile.TemporaryDirectory() as folder:
        src = make_level(Path(folder), (width, height))
        results = {}
        # Peak RSS of children is a running maximum, so each contender gets its own interpreter run.
        for name in ("floor", "slidestock", "openslide"):
            probe = subprocess.run(
                [sys.executable, __file__, "--one", name, str(src), f"{out_size[0]}x{out_size[1]}", str(args.repeat)],
                check=True,
                capture_output=True,
                text=True,
            )
            results[name] = json.loads(probe.stdout)
    floor = results["floor"]["seconds"]
    lines = [
        f"# downsample: one {width} x {height} px level (JPEG tiles, 1 µm/px) to {out_size[0]} x {out_size[1]} px",
        "",
        "| contender | best wall s | vs floor | peak RSS MB |",
        "|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(f"| {name} | {r['seconds']:.2f} | {r['seconds'] / floor:.2f}x | {r['rss_mb']:.0f} |")
    ratio = results["openslide"]["seconds"] / results["slidestock"]["seconds"]
    lines += ["", f"slidestock is {ratio:.2f}x faster than OpenSlide get_thumbnail in this run."]
    text = "\n".join(lines) + "\n"
    print(text)
    (REPO / "benchmarks" / "results" / "downsample.md").write_text(text)


def one(name: str, src: str, size: str, repeat: str) -> None:
    w, h = (int(v) for v in size.split("x"))
    with tempfile.TemporaryDirectory() as out:
        import pydicom

        width = int(pydicom.dcmread(src, stop_before_pixels=True).TotalPixelMatrixColumns)
        times = [run(name, Path(src), (w, h), Path(out), width) for _ in range(int(repeat))]
    print(json.dumps({"seconds": min(t for t, _ in times), "rss_mb": max(r for _, r in times)}))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        one(*sys.argv[2:6])
    else:
        main()
