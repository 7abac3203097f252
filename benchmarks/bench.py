"""Benchmarks: our jobs against the machine's limit and against what a user would write, in one run.

    make bench                      # every section on ../shared/data, writes benchmarks/RESULTS.md (~75 min)
    make bench BENCH_ARGS="--quick" # fewer photos and repeats, no scale cases, for trying changes (~10 min)
    make bench BENCH_ARGS="--sections score"

Each figure is the median of --repeats runs with its spread (min-max), measured in this run beside its baselines.
Sections (one module each): preprocess (benchmarks/preprocess_bench.py), train (train_bench.py), score
(score_bench.py); the scale cases (115,000 files) are part of preprocess and score. The harness (harness.py) measures
wall time, CPU time and the peak memory of whole process trees. RESULTS.md is rewritten after every section and on a
stop (SIGTERM, Ctrl-C), and keeps what this run did not measure from the file it found, marked (results.py).
"""

import argparse
import dataclasses
import datetime
import signal
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script (make bench): the repository root must be importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import harness, preprocess_bench, results, score_bench, train_bench  # noqa: E402

SECTIONS = {"preprocess": preprocess_bench.run, "train": train_bench.run, "score": score_bench.run}


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


def _stop(signum, _frame):
    raise SystemExit(128 + signum)  # unwinds through the running measurement, so the finished figures are written


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    if not (harness.SHARED / "pets-180").is_dir():
        raise SystemExit(f"error: the benchmarks need the real photos in {harness.SHARED}")
    names = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = set(names) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"error: unknown section(s) {sorted(unknown)}; choose from {sorted(SECTIONS)}")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)  # at launch: not a failure to write after an hour's measurements
    sections = results.load(output)  # the sections this run does not measure stay, marked with their own run
    this_run = results.Section(
        date=f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        code_version=harness.code_version(), machine=results.machine_text(harness.machine()),
        command=f"`make bench BENCH_ARGS=\"{' '.join(argv)}\"`, {args.repeats} repeats ({args.scale_repeats} of the "
                f"115,000-file runs)", rows=[], ratios={})
    signal.signal(signal.SIGTERM, _stop)
    started = time.perf_counter()

    def write(stopped: str = "") -> str:
        return results.write(output, sections, list(SECTIONS), names, this_run,
                             (time.perf_counter() - started) / 60, stopped)

    text = ""
    for name in names:
        report, earlier = harness.Report(), sections.get(name)
        sections[name] = section = dataclasses.replace(this_run, rows=report.rows, ratios=report.ratios,
                                                       complete=False)
        try:
            SECTIONS[name](args, report)
        except BaseException as error:  # SIGTERM, Ctrl-C or a failure: keep what was measured, then stop
            section.keep_unmeasured(earlier)
            write(f"during {name} ({type(error).__name__}{': ' + str(error) if str(error) else ''})")
            raise
        section.complete = True
        if report.left_out:
            section.keep_unmeasured(earlier)
        text = write()
    print(text)


if __name__ == "__main__":
    main()
