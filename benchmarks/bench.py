"""Benchmarks: our jobs against the machine's limit and against what a user would write, in one run.

    make bench                      # every section on ../shared/data, writes benchmarks/RESULTS.md (~75 min)
    make bench BENCH_ARGS="--quick" # fewer photos and repeats, no scale cases, for trying changes (~10 min)
    make bench BENCH_ARGS="--sections score"

Each figure is the median of --repeats runs with its spread (min-max), measured in this run beside its baselines.
Sections (one module each): preprocess (benchmarks/preprocess_bench.py), train (train_bench.py), score
(score_bench.py); the scale cases (115,000 files) are part of preprocess and score. The harness (harness.py) measures
wall time, CPU time and the peak memory of whole process trees, and judges the targets.
"""

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script (make bench): the repository root must be importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import harness, preprocess_bench, score_bench, train_bench  # noqa: E402

SECTIONS = {"preprocess": preprocess_bench.run, "train": train_bench.run, "score": score_bench.run}
# Everything after this line in RESULTS.md is written by hand (the profiles and why a target is missed) and is kept
# when the figures above it are regenerated; its own heading says which run it describes.
ANALYSIS_MARKER = "<!-- analysis: written by hand, kept by bench.py -->"


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated: " + ", ".join(SECTIONS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scale_repeats", type=int, default=2, help="repeats of the 115,000-file runs")
    parser.add_argument("--skip_scale", action="store_true", help="leave out the 115,000-file cases")
    parser.add_argument("--pets_limit", type=int, default=None, help="photos of pets-180 to use (default all)")
    parser.add_argument("--train_limit", type=int, default=4000, help="pets-180 photos preprocessed for the "
                        "training section (the input pipeline caches them; speed doesn't need all 23k)")
    parser.add_argument("--train_steps", type=int, default=30, help="timed training steps per measurement")
    parser.add_argument("--score_arch", default="resnet_lite", help="architecture exported for the scoring section")
    parser.add_argument("--model", default=None, help="an export (version dir or root with latest) to score with "
                        "instead of an untrained --score_arch (speed does not depend on the weights)")
    parser.add_argument("--quick", action="store_true", help="2 repeats on 4,000 pets-180 photos, no scale cases")
    parser.add_argument("--output", default=str(harness.ROOT / "benchmarks" / "RESULTS.md"))
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.pets_limit, args.skip_scale = 2, args.pets_limit or 4000, True
    return args


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    if not (harness.SHARED / "pets-180").is_dir():
        raise SystemExit(f"error: the benchmarks need the real photos in {harness.SHARED}")
    sections = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"error: unknown section(s) {sorted(unknown)}; choose from {sorted(SECTIONS)}")
    report = harness.Report()
    started = time.perf_counter()
    for name in sections:
        report.rows.append(f"| **{name}** | | | | |")
        SECTIONS[name](args, report)
    info = harness.machine()
    lines = [
        "# Benchmark results",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {info['cores']} cores, {info['cpu']}, {info['memory_gib']} GiB, Python {info['python']}",
        f"- code version: {harness.code_version()}",
        f"- command: `make bench BENCH_ARGS=\"{' '.join(argv)}\"`, {args.repeats} repeats "
        f"({args.scale_repeats} of the 115,000-file runs), {(time.perf_counter() - started) / 60:.0f} min",
        "",
        "## Targets",
        "",
        "| target | this run | |",
        "|---|---|---|",
        *harness.target_rows(report.ratios),
        "",
        "## Figures",
        "",
        "CPU ms/image: CPU time (user + system, every process of the job) per image, median over the runs; with 2 "
        "cores, wall time per image is at best half of it. Peak memory: resident memory of the job's whole process "
        "tree, sampled every 0.1 s.",
        "",
        "| figure | median | spread (min to max) | runs | CPU ms/image |",
        "|---|---|---|---|---|",
        *report.rows,
        "",
    ]
    output = Path(args.output)
    kept = output.read_text().split(ANALYSIS_MARKER, 1) if output.exists() else []
    if len(kept) == 2:  # the hand-written analysis of the last full run stays, marked as such, until rewritten
        lines += [ANALYSIS_MARKER + kept[1].rstrip("\n"), ""]
    output.write_text("\n".join(lines))
    output.with_suffix(".json").write_text(json.dumps({"machine": info, "rows": report.rows,
                                                       "ratios": report.ratios}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
