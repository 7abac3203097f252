"""Benchmarks: our jobs against the machine's limit and against what a user would write, in one run.

    make bench                      # full suite on ../shared/data, writes benchmarks/RESULTS.md (~40 min)
    make bench BENCH_ARGS="--quick" # fewer photos and repeats, for trying changes (~8 min)

Each figure is the median of --repeats runs with its spread (min-max). Nothing here is a test: the test
suite never times anything. Sections:
  preprocess  Beam job end to end vs (a) shared decode-resize-encode in a plain process pool (the limit)
              and (b) a naive one-process Pillow loop (open, convert, full-size resize, encode, write)
  train       tf.data input pipeline alone vs the models' training step rate; input wait share;
              MirroredStrategy over two logical CPU devices vs the default strategy
  score       Beam job end to end vs (a) the model alone on pre-decoded batches and (b) a naive loop
              (Pillow per file, model on batches, one process); peak memory for 1,000 and 23,000 images
"""

import argparse
import concurrent.futures
import datetime
import functools
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
PYTHON = sys.executable


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cores": os.cpu_count(), "cpu": cpu, "memory_gib": round(memory, 1), "python": platform.python_version()}


def code_version() -> str:
    sys.path.insert(0, str(ROOT))
    from trainer.provenance import code_version as version

    return version()


def list_images(folder: Path, limit: int | None = None) -> list[Path]:
    paths = sorted(p for p in folder.rglob("*") if p.is_file())
    return paths[:limit] if limit else paths


class Figure:
    """One measured quantity over repeated runs: median and min-max."""

    def __init__(self, name: str, unit: str):
        self.name, self.unit, self.values = name, unit, []

    def add(self, value: float) -> None:
        self.values.append(value)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def row(self) -> str:
        low, high = min(self.values), max(self.values)
        return f"| {self.name} | {self.median:,.1f} {self.unit} | {low:,.1f} to {high:,.1f} | {len(self.values)} |"


def repeat(figure: Figure, repeats: int, measure) -> Figure:
    for _ in range(repeats):
        figure.add(measure())
        print(f"  {figure.name}: {figure.values[-1]:,.1f} {figure.unit}", flush=True)
    return figure


# --- preprocessing ------------------------------------------------------------------------------------

def _decode_resize_encode(path: str, size: int) -> int:
    from beam_pipelines import imaging

    pixels = imaging.decode_image(Path(path).read_bytes(), (size, size)).pixels
    return len(imaging.encode_jpeg(pixels))


def limit_rate(paths: list[Path], size: int, workers: int) -> float:
    """The shared decode-resize-encode function in a plain process pool: nothing else in the way."""
    start = time.perf_counter()
    with concurrent.futures.ProcessPoolExecutor(workers) as pool:
        list(pool.map(_decode_resize_encode, map(str, paths), [size] * len(paths), chunksize=64))
    return len(paths) / (time.perf_counter() - start)


def naive_preprocess_rate(paths: list[Path], size: int) -> float:
    """What a user would write first: one process, full decode, full-size resize, encode, write."""
    from PIL import Image

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        for i, path in enumerate(paths):
            image = Image.open(path).convert("RGB").resize((size, size))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=95)
            Path(out, f"{i}.jpg").write_bytes(buffer.getvalue())
        return len(paths) / (time.perf_counter() - start)


def beam_preprocess_rate(inputs: list[str], count: int, workers: int, extra: list[str] = ()) -> float:
    with tempfile.TemporaryDirectory() as out:
        command = [PYTHON, "-m", "beam_pipelines.preprocess", *sum((["--input", i] for i in inputs), []),
                   "--output_dir", f"{out}/data", "--runner", "DirectRunner",
                   "--direct_running_mode", "multi_processing", "--direct_num_workers", str(workers), *extra]
        start = time.perf_counter()
        subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
        return count / (time.perf_counter() - start)


def bench_preprocess(args, results: list[str]) -> None:
    workers = os.cpu_count() or 1
    for folder, limit in (("pets-180", args.pets_limit), ("kaggle-fullres", None)):
        if limit:  # a stable subset: the first N/2 photos of each class
            paths = list_images(SHARED / folder / "cat", limit // 2) + list_images(SHARED / folder / "dog", limit // 2)
            inputs = _link_subset(paths)
        else:
            paths, inputs = list_images(SHARED / folder), [str(SHARED / folder)]
        print(f"preprocess {folder}: {len(paths)} photos", flush=True)
        limit_fig, naive_fig, ours = figures = [
            repeat(Figure(f"limit: decode-resize-encode, {workers} processes ({folder})", "img/s"), args.repeats,
                   functools.partial(limit_rate, paths, 180, workers)),
            repeat(Figure(f"naive: Pillow loop, 1 process ({folder})", "img/s"), args.repeats,
                   functools.partial(naive_preprocess_rate, paths, 180)),
            repeat(Figure(f"ours: Beam preprocess end to end ({folder})", "img/s"), args.repeats,
                   functools.partial(beam_preprocess_rate, inputs, len(paths), workers)),
        ]
        results += [figure.row() for figure in figures]
        results.append(f"| ours / limit ({folder}) | {ours.median / limit_fig.median:.0%} | | |")
        results.append(f"| ours / naive ({folder}) | {ours.median / naive_fig.median:.1f}x | | |")


def _link_subset(paths: list[Path]) -> list[str]:
    """A folder of symlinks to a subset of photos, keeping class folders, for the Beam job to read."""
    root = Path(tempfile.mkdtemp(prefix="bench-subset-"))
    for path in paths:
        target = root / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(path)
    return [str(root)]


SECTIONS = {"preprocess": bench_preprocess}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated: " + ", ".join(SECTIONS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pets_limit", type=int, default=None, help="photos of pets-180 to use (default all)")
    parser.add_argument("--quick", action="store_true", help="2 repeats on 4,000 pets-180 photos")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.pets_limit = 2, args.pets_limit or 4000
    if not (SHARED / "pets-180").is_dir():
        raise SystemExit(f"error: the benchmarks need the real photos in {SHARED}")
    sections = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"error: unknown section(s) {sorted(unknown)}; choose from {sorted(SECTIONS)}")
    results: list[str] = []
    started = time.perf_counter()
    for name in sections:
        results.append(f"| **{name}** | | | |")
        SECTIONS[name](args, results)
    info = machine()
    report = [
        "# Benchmark results",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {info['cores']} cores, {info['cpu']}, {info['memory_gib']} GiB, Python {info['python']}",
        f"- code version: {code_version()}",
        f"- command: `make bench BENCH_ARGS=\"{' '.join(argv or sys.argv[1:])}\"`, {args.repeats} repeats, "
        f"{(time.perf_counter() - started) / 60:.0f} min",
        "",
        "| figure | median | spread (min to max) | runs |",
        "|---|---|---|---|",
        *results,
        "",
    ]
    Path(args.output).write_text("\n".join(report))
    Path(args.output).with_suffix(".json").write_text(json.dumps({"machine": info, "rows": results}, indent=1))
    print("\n".join(report))


if __name__ == "__main__":
    main()
