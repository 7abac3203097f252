"""RESULTS.md and RESULTS.json: what `make bench` writes, a section at a time.

A full run takes 72 minutes on a quiet day and twice that on a throttled one, so the file is rewritten after every
section: a run stopped part-way (SIGTERM, Ctrl-C, a failure) keeps the sections it finished and the figures of the
one it was in. A run of some sections (`--sections score`) replaces those and keeps the others from the file it
found, each marked with the date and code version of the run that measured it: targets are only ever judged on
ratios measured in one run, and the table says which run that was.

A section's figures this run did not reach (stopped, or `--skip_scale`) stay from the earlier run, marked too; a
section that ran all its cases replaces the earlier figures whole (a renamed row does not linger).

RESULTS.json holds one record per section: {"sections": {name: {"date", "code_version", "machine", "command",
"rows", "ratios", "complete", "earlier_ratios"}}}. A file of the older layout (one run: "rows" and "ratios" at the
top) is read as that run's sections, dated from its RESULTS.md header.
"""

import dataclasses
import json
import re
from pathlib import Path

from benchmarks import harness

# Everything after this line in RESULTS.md is written by hand (the profiles and why a target is missed) and is kept
# when the figures above it are regenerated; its own heading says which run it describes.
ANALYSIS_MARKER = "<!-- analysis: written by hand, kept by bench.py -->"
_SECTION_ROW = re.compile(r"^\| \*\*(\w+)\*\*")


@dataclasses.dataclass
class Section:
    """One section's figures and ratios, and the run that measured them."""

    date: str
    code_version: str
    machine: str
    command: str
    rows: list
    ratios: dict
    complete: bool = True
    earlier_ratios: dict = dataclasses.field(default_factory=dict)  # ratio -> date of the run that measured it

    def source(self) -> str:
        return f"{self.date}, code {self.code_version}"

    def keep_unmeasured(self, earlier: "Section | None") -> None:
        """Add the figures and ratios of `earlier` (this section in the file found) that this run did not measure
        (a stopped run, or the scale cases left out), each marked with the run that measured it. Not called for a
        section that ran all its cases: its figures replace the earlier ones whole."""
        if earlier is None:
            return
        measured = {_figure(row) for row in self.rows}
        for row in earlier.rows:
            if _figure(row) not in measured:
                self.rows.append(row if _EARLIER in row else row.replace(" |", f"{_EARLIER}{earlier.date}) |", 1))
        for name, value in earlier.ratios.items():
            if name not in self.ratios:
                self.ratios[name] = value
                self.earlier_ratios[name] = earlier.earlier_ratios.get(name, earlier.date)


_EARLIER = " (run of "


def _figure(row: str) -> str:
    """A figures-table row's name, without the mark of an earlier run."""
    return row.split("|")[1].split(_EARLIER)[0].strip()


def machine_text(info: dict) -> str:
    return f"{info['cores']} cores, {info['cpu']}, {info['memory_gib']} GiB, Python {info['python']}"


def _header_value(markdown: str, key: str) -> str:
    found = re.search(rf"^- {key}: (.+)$", markdown, re.MULTILINE)
    return found.group(1).strip() if found else "unknown"


def load(output: Path) -> dict[str, Section]:
    """The sections of the results file at `output` (RESULTS.md; its .json beside it), or {} when there is none."""
    path = output.with_suffix(".json")
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    if "sections" in data:
        return {name: Section(**record) for name, record in data["sections"].items()}
    markdown = output.read_text() if output.exists() else ""  # the older layout: one run, dated in RESULTS.md
    run = dict(date=_header_value(markdown, "date"), code_version=_header_value(markdown, "code version"),
               machine=_header_value(markdown, "machine"), command=_header_value(markdown, "command"))
    sections, name = {}, None
    for row in data.get("rows", []):
        heading = _SECTION_ROW.match(row)
        if heading:
            name = heading.group(1)
            sections[name] = Section(**run, rows=[], ratios={})
        elif name:
            sections[name].rows.append(row)
    for ratio, value in data.get("ratios", {}).items():
        section = sections.get(ratio.split(" ", 1)[0])
        if section is not None:
            section.ratios[ratio] = value
    return sections


def target_rows(sections: dict[str, Section], measured) -> list[str]:
    """The targets table: each judged on the ratio of the run that measured it, marked when that is an earlier run
    (a section not in `measured`)."""
    compare = {">=": float.__ge__, ">": float.__gt__, "<": float.__lt__, "<=": float.__le__, "==": float.__eq__}
    rows = []
    for name, op, threshold, text in harness.TARGETS:
        owner = next((owner for owner, section in sections.items() if name in section.ratios), None)
        if owner is None:
            rows.append(f"| {text} | not measured | |")
            continue
        section = sections[owner]
        value = float(section.ratios[name])
        date = section.earlier_ratios.get(name) or ("" if owner in measured else section.date)
        earlier = f", run of {date}" if date else ""
        met = compare[op](value, float(threshold))
        rows.append(f"| {text} | {value:.2f} ({op} {threshold:g}{earlier}) | {'met' if met else '**missed**'} |")
    return rows


def render(sections: dict[str, Section], order, measured, this_run: Section, minutes: float, stopped: str = "") -> str:
    """RESULTS.md without the analysis: this run's header, the targets, then every section's figures, in `order`;
    `measured` names the sections this run measured (the others were kept from earlier runs)."""
    ours = [name for name in order if name in sections and name in measured]
    kept = [name for name in order if name in sections and name not in ours]
    lines = [
        "# Benchmark results",
        "",
        f"- date: {this_run.date}",
        f"- machine: {this_run.machine}",
        f"- code version: {this_run.code_version}",
        f"- command: {this_run.command}, {minutes:.0f} min",
        f"- sections measured in this run: {', '.join(ours) or 'none'}",
    ]
    if kept:
        lines.append("- sections kept from earlier runs (their rows say which): "
                     + ", ".join(f"{name} ({sections[name].source()})" for name in kept))
    if stopped:
        lines.append(f"- **stopped** {stopped}: the sections after it were not run, and its own rows are the "
                     f"figures it finished")
    lines += ["", "## Targets", "", "| target | measured | |", "|---|---|---|", *target_rows(sections, measured), "",
              "## Figures", "",
              "CPU ms/image: CPU time (user + system, every process of the job) per image, median over the runs; "
              "with 2 cores, wall time per image is at best half of it. Peak memory: resident memory of the job's "
              "whole process tree, sampled every 0.1 s.",
              "", "| figure | median | spread (min to max) | runs | CPU ms/image |", "|---|---|---|---|---|"]
    for name in order:
        if name not in sections:
            continue
        section = sections[name]
        marks = [] if name in ours else [f"run of {section.source()}, {section.machine}"]
        if not section.complete:
            marks.append("stopped part-way")
        lines.append(f"| **{name}**{' (' + '; '.join(marks) + ')' if marks else ''} | | | | |")
        lines += section.rows
    return "\n".join(lines) + "\n"


def write(output: Path, sections: dict[str, Section], order, measured, this_run: Section, minutes: float,
          stopped: str = "") -> str:
    """Write RESULTS.md (keeping the hand-written analysis after ANALYSIS_MARKER) and RESULTS.json; return the md."""
    text = render(sections, order, measured, this_run, minutes, stopped)
    kept = output.read_text().split(ANALYSIS_MARKER, 1) if output.exists() else []
    if len(kept) == 2:
        text += "\n" + ANALYSIS_MARKER + kept[1].rstrip("\n") + "\n"
    output.write_text(text)
    output.with_suffix(".json").write_text(json.dumps(
        {"sections": {name: dataclasses.asdict(sections[name]) for name in order if name in sections}}, indent=1))
    return text
