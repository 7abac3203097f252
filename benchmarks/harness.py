"""What every benchmark section uses: repeated measurements with their spread, CPU time and peak memory of a whole
process tree, ratios judged against targets, the photo folders, and the report.

Nothing here is a test: the test suite never times anything.
"""

import contextlib
import dataclasses
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from trainer.config import DEFAULT_PROGRESSIVE_FROM as PROGRESSIVE_FROM

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
PYTHON = sys.executable
CLASSES = ("cat", "dog")


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
    from trainer.provenance import code_version as version

    return version()


def list_images(folder: Path, limit: int | None = None) -> list[Path]:
    paths = sorted(p for p in folder.rglob("*") if p.is_file())
    return paths[:limit] if limit else paths


def subset(folder: str, limit: int | None) -> list[Path]:
    """Every photo of a ../shared/data folder, or a stable subset: the first limit/2 photos of each class."""
    if not limit:
        return list_images(SHARED / folder)
    return list_images(SHARED / folder / "cat", limit // 2) + list_images(SHARED / folder / "dog", limit // 2)


def link_folder(paths, root: Path, copies: int = 1) -> Path:
    """`copies` hard-linked copies of paths under root/copy<k>/<class>/<name>, distinct names, no disk space (falls
    back to symlinks across file systems). Returns root."""
    for copy in range(copies):
        for path in paths:
            target = root / f"copy{copy}" / path.parent.name / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, target)
            except OSError:
                target.symlink_to(path)
    return root


def temp_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"bench-{prefix}-"))


class CpuClock:
    """CPU seconds (user + system) spent in a block by this process and by the children it waited for: subprocess
    jobs with all their worker processes, pool workers. The denominator of "CPU ms per image", the profile that says
    where the time goes."""

    def __enter__(self):
        self._start = self._now()
        return self

    def __exit__(self, *exc):
        self.seconds = self._now() - self._start

    @staticmethod
    def _now() -> float:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@dataclasses.dataclass
class Run:
    """One measured command: wall seconds, peak resident memory of its whole process tree (MiB), CPU seconds."""

    seconds: float
    peak_mib: float
    cpu_seconds: float
    stdout: str


def _kill_tree(process) -> None:
    import psutil

    try:
        tree = [*process.children(recursive=True), process]
    except psutil.Error:
        tree = [process]
    for member in tree:
        with contextlib.suppress(psutil.Error):
            member.kill()
    psutil.wait_procs(tree, timeout=10)


def run_command(command: list[str], env: dict | None = None) -> Run:
    """Runs command to completion, sampling the resident memory of it and every descendant every 0.1 s."""
    import psutil

    with tempfile.TemporaryFile("w+") as out, CpuClock() as cpu:
        start = time.perf_counter()
        process = psutil.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            peak = 0
            while process.poll() is None:
                try:
                    tree = [process, *process.children(recursive=True)]
                    peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
                except psutil.Error:
                    pass
                time.sleep(0.1)
        except BaseException:  # SIGTERM or Ctrl-C in the bench: the job it runs must not go on alone
            _kill_tree(process)
            raise
        seconds = time.perf_counter() - start
        out.seek(0)
        text = out.read()
    if process.returncode != 0:
        raise RuntimeError(f"failed ({process.returncode}): {' '.join(command)}\n{text[-3000:]}")
    return Run(seconds, peak / 2**20, cpu.seconds, text)


class Figure:
    """One measured quantity over repeated runs: median and min-max, and CPU ms per image where measured."""

    def __init__(self, name: str, unit: str):
        self.name, self.unit, self.values, self.cpu_ms = name, unit, [], []

    def add(self, value: float, cpu_ms: float | None = None) -> None:
        self.values.append(value)
        if cpu_ms is not None:
            self.cpu_ms.append(cpu_ms)
        cpu = f", {cpu_ms:.2f} CPU ms/image" if cpu_ms is not None else ""
        print(f"  {self.name}: {value:,.1f} {self.unit}{cpu}", flush=True)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def median_cpu_ms(self) -> float:
        return statistics.median(self.cpu_ms)

    def row(self) -> str:
        low, high = min(self.values), max(self.values)
        cpu = f"{statistics.median(self.cpu_ms):.2f}" if self.cpu_ms else ""
        return (f"| {self.name} | {self.median:,.1f} {self.unit} | {low:,.1f} to {high:,.1f} | {len(self.values)} "
                f"| {cpu} |")


def repeat(figure: Figure, repeats: int, measure) -> Figure:
    """measure() returns a value, or (value, CPU ms per image)."""
    for _ in range(repeats):
        outcome = measure()
        figure.add(*outcome) if isinstance(outcome, tuple) else figure.add(outcome)
    return figure


@dataclasses.dataclass
class Report:
    """Rows of the figures table, and the ratios the targets are judged on."""

    rows: list = dataclasses.field(default_factory=list)
    ratios: dict = dataclasses.field(default_factory=dict)
    # Cases this run left out on purpose (--skip_scale): the earlier run's figures for them stay in RESULTS.md. A
    # section that ran all its cases replaces its earlier figures whole, so a row renamed or dropped does not linger.
    left_out: bool = False

    def ratio(self, name: str, value: float, shown: str) -> None:
        self.ratios[name] = value
        self.rows.append(f"| {name} | {shown} | | | |")

    def note(self, name: str, text: str) -> None:
        self.rows.append(f"| {name} | {text} | | | |")


# (ratio name, comparison, threshold, the target as the issue states it)
TARGETS = (
    ("preprocess ours/naive (pets-180)", ">=", 1.2, "preprocessing pets-180 >= 1.2x the naive loop (issue 14)"),
    ("preprocess ours/limit (pets-180)", ">=", 0.5, "preprocessing pets-180 >= 50% of the limit (issue 14)"),
    ("preprocess ours/naive (kaggle-fullres)", ">", 1.0, "preprocessing kaggle-fullres faster than the naive loop "
                                                        "(issue 14)"),
    ("preprocess peak memory 115k/23k", "<=", 1.15, "preprocessing peak memory, 115,000 vs 23,000 photos, within "
                                                    "1.15x (issue 14)"),
    ("score ours/naive (pets-180)", ">", 1.0, "scoring 23,000 faster than the naive script (issue 13)"),
    ("score ours/naive (115k)", ">", 1.0, "scoring 115,000 faster than the naive script (issue 13)"),
    ("score ours/model-only (pets-180)", ">=", 0.85, "scoring pets-180 >= 85% of the model-only rate (issue 13)"),
    ("score ours/ceiling (kaggle-fullres)", ">=", 0.90, "scoring kaggle-fullres >= 90% of the decode + model ceiling "
                                                        "(issue 13)"),
    ("score peak memory 115k/23k", "<=", 1.10, "scoring peak memory, 115,000 vs 23,000 files, within 1.10x "
                                               "(issue 13)"),
    ("score incremental wall / 500 alone", "<=", 1.5, "500 new files in 115,000 scored: wall within 1.5x of the 500 "
                                                      "alone (issue 13)"),
    ("score incremental memory / 500 alone", "<=", 1.10, "500 new files in 115,000 scored: peak memory within 1.10x of "
                                                         "the 500 alone (issue 13)"),
    ("score incremental scored exactly 500", "==", 1.0, "500 new files in 115,000 scored: exactly the 500 scored "
                                                        "(issue 13)"),
    ("score 500 / naive script", "<=", 1.5, "500 new files (an hourly run) within 1.5x of the naive script's wall "
                                            "time (issue 13)"),
    ("train input/consumption (resnet_lite)", ">=", 5.0, "input pipeline >= 5x the default model's consumption"),
    ("train input wait share (resnet_lite)", "<", 0.05, "under 5% of step time waiting for input"),
    (f"train input/consumption (resnet_lite at {PROGRESSIVE_FROM})", ">=", 5.0,
     f"input pipeline >= 5x the default model's consumption at {PROGRESSIVE_FROM} (progressive start)"),
    (f"train input wait share (resnet_lite at {PROGRESSIVE_FROM})", "<", 0.05,
     f"under 5% of step time waiting for input at {PROGRESSIVE_FROM} (progressive start)"),
)


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
