"""Scoring section: the Beam job end to end against (a) the model alone on pre-decoded batches (the limit), (b) the
decode + model ceiling, and (c) the naive script a user would write (benchmarks/naive_score.py), each in the same run;
at scale, 115,000 files (pets-180 five times, hard links with distinct names) beside the 23,000, and an hourly
CronJob's incremental run: 500 new files in that folder, already scored, beside a first run over the 500 alone.

"ours" runs the job as the scoring CronJob does (k8s/base/score-cronjob.yaml: DirectRunner, --skip_scored with its
own output directory); peak memory is the resident memory of the job's whole process tree, children included."""

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.harness import (
    PYTHON,
    SHARED,
    CpuClock,
    Figure,
    link_folder,
    remove,
    repeat,
    run_command,
    subset,
    temp_dir,
)

CRONJOB_FLAGS = ["--runner", "DirectRunner"]  # what k8s/base/score-cronjob.yaml passes besides the paths


def export_model(args) -> str:
    """The default architecture (untrained: speed does not depend on the weights), exported once; or --model."""
    if args.model:
        return args.model
    from benchmarks.train_bench import build
    from trainer import export

    _, model = build(args.score_arch)
    root = str(temp_dir("model") / "export")
    export.export_model(model, root, class_names=["cat", "dog"], input_size=[180, 180], model_name=args.score_arch)
    return root


def _signature(model_root: str):
    import tensorflow as tf

    from trainer import publish

    return tf.saved_model.load(publish.resolve_model(model_root)).signatures["serve_pixels"]


def model_only_rate(model_root: str, paths: list[Path], batch: int = 64):
    """The limit: the model alone on pre-decoded batches of 64."""
    import numpy as np
    import tensorflow as tf

    from beam_pipelines import imaging

    signature = _signature(model_root)
    pixels = np.stack([imaging.decode_image(p.read_bytes(), (180, 180)).pixels for p in paths[:batch * 8]])
    batches = [tf.constant(pixels[i:i + batch]) for i in range(0, len(pixels), batch)]
    signature(pixels=batches[0])
    start = time.perf_counter()
    with CpuClock() as cpu:
        for chunk in batches:
            signature(pixels=chunk)["probability"].numpy()
    return len(pixels) / (time.perf_counter() - start), cpu.seconds * 1000 / len(pixels)


def decode_rate(paths: list[Path]):
    """The shared decoder alone, one process: what every scoring path pays per file before the model."""
    from beam_pipelines import imaging

    data = [p.read_bytes() for p in paths]
    start = time.perf_counter()
    with CpuClock() as cpu:
        for content in data:
            imaging.decode_image(content, (180, 180))
    return len(data) / (time.perf_counter() - start), cpu.seconds * 1000 / len(data)


def naive_script(model_root: str, paths: list[Path]):
    """The naive script end to end: Python, TensorFlow and the model load included, as in our job's figures."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as listing:
        listing.write("\n".join(map(str, paths)))
        listing.flush()
        run = run_command([PYTHON, "-m", "benchmarks.naive_score", model_root, listing.name])
    return len(paths) / run.seconds, run.cpu_seconds * 1000 / len(paths), run.seconds


def ours(model_root: str, inputs: list[str], output: Path, run_id: str, extra=()):
    """One scoring run as the CronJob runs it: (summary.json, the measured run)."""
    command = [PYTHON, "-m", "beam_pipelines.score", "--model", model_root, *sum((["--input", i] for i in inputs), []),
               "--output_dir", str(output), "--skip_scored", str(output), "--run_id", run_id, *CRONJOB_FLAGS, *extra]
    run = run_command(command)
    return json.loads((output / run_id / "summary.json").read_text()), run


def fresh(model_root: str, inputs: list[str], count: int, extra=()):
    """(images/s, CPU ms per image, peak MiB) of a first run into an empty output directory."""
    output = temp_dir("scores")
    try:
        summary, run = ours(model_root, inputs, output, "bench", extra)
    finally:
        remove(output)
    assert summary["scored"] + summary["failed"] == count, summary
    return count / run.seconds, run.cpu_seconds * 1000 / count, run.peak_mib


def measure(figure: Figure, memory: Figure, repeats: int, model_root: str, inputs, count: int, extra=()) -> None:
    for _ in range(repeats):
        rate, cpu_ms, peak = fresh(model_root, inputs, count, extra)
        figure.add(rate, cpu_ms)
        memory.add(peak)


def run(args, report) -> None:
    model_root = export_model(args)
    fullres = subset("kaggle-fullres", None)
    pets = subset("pets-180", args.pets_limit)
    pets_inputs = [str(link_folder(pets, temp_dir("pets")))] if args.pets_limit else [str(SHARED / "pets-180")]
    print(f"score: model {model_root}; {len(fullres)} and {len(pets):,} files", flush=True)
    limit = repeat(Figure("limit: model alone on pre-decoded batches of 64", "img/s"), args.repeats,
                   lambda: model_only_rate(model_root, fullres))
    decode_full = repeat(Figure("decode alone: imaging.decode_image to 180x180, 1 process (kaggle-fullres)", "img/s"),
                         args.repeats, lambda: decode_rate(fullres))
    decode_pets = repeat(Figure("decode alone: imaging.decode_image, 1 process (pets-180, 2,000)", "img/s"),
                         args.repeats, lambda: decode_rate(pets[:2000]))
    report.rows += [limit.row(), decode_full.row(), decode_pets.row()]

    results = {}
    for name, paths, inputs in (("kaggle-fullres", fullres, [str(SHARED / "kaggle-fullres")]),
                                ("pets-180", pets, pets_inputs)):
        naive = repeat(Figure(f"naive script end to end ({name}, {len(paths):,})", "img/s"), args.repeats,
                       lambda paths=paths: naive_script(model_root, paths)[:2])
        ours_fig = Figure(f"ours: Beam scoring end to end, as the CronJob runs it ({name}, {len(paths):,})", "img/s")
        memory = Figure(f"ours: peak memory ({name}, {len(paths):,} files)", "MiB")
        measure(ours_fig, memory, args.repeats, model_root, inputs, len(paths))
        multi = Figure(f"ours, --direct_running_mode multi_processing, 2 workers ({name})", "img/s")
        for _ in range(args.repeats):
            rate, cpu_ms, _ = fresh(model_root, inputs, len(paths), ["--direct_running_mode", "multi_processing",
                                                                     "--direct_num_workers", "2"])
            multi.add(rate, cpu_ms)
        report.rows += [naive.row(), ours_fig.row(), multi.row(), memory.row()]
        results[name] = (naive, ours_fig, memory)
    model_ms = limit.median_cpu_ms
    cores = os.cpu_count() or 1
    for name, decode in (("kaggle-fullres", decode_full), ("pets-180", decode_pets)):
        naive, ours_fig, _ = results[name]
        total = ours_fig.median_cpu_ms
        report.note(f"where scoring's CPU goes ({name})",
                    f"{total:.2f} ms/image = decode {decode.median_cpu_ms:.2f} + model {model_ms:.2f} + reading, IPC, "
                    f"Beam and start-up {total - decode.median_cpu_ms - model_ms:.2f}")
        report.ratio(f"score ours/naive ({name})", ours_fig.median / naive.median,
                     f"{ours_fig.median / naive.median:.2f}x (both end to end)")
    ceiling = cores * 1000 / (decode_full.median_cpu_ms + model_ms)
    report.ratio("score ours/ceiling (kaggle-fullres)", results["kaggle-fullres"][1].median / ceiling,
                 f"{results['kaggle-fullres'][1].median / ceiling:.0%} of {ceiling:,.0f} img/s = {cores} cores / "
                 f"(decode {decode_full.median_cpu_ms:.2f} + model {model_ms:.2f} ms)")
    report.ratio("score ours/model-only (pets-180)", results["pets-180"][1].median / limit.median,
                 f"{results['pets-180'][1].median / limit.median:.0%}")
    if args.skip_scale:
        report.left_out = True
    else:
        scale(args, report, model_root, pets, results["pets-180"][2])


def scale(args, report, model_root: str, pets: list[Path], small_memory: Figure) -> None:
    copies = 5
    root = temp_dir("score-scale")
    output = temp_dir("score-scale-out")
    try:
        link_folder(pets, root / "folder", copies)
        count = len(pets) * copies
        print(f"score scale: {count:,} files", flush=True)
        naive = Figure(f"naive script end to end ({count:,})", "img/s")
        large = Figure(f"ours: Beam scoring end to end ({count:,} files)", "img/s")
        memory = Figure(f"ours: peak memory ({count:,} files)", "MiB")
        for attempt in range(args.scale_repeats):
            naive.add(*naive_script(model_root, [p for p in (root / "folder").rglob("*") if p.is_file()])[:2])
            remove(output)
            summary, run = ours(model_root, [str(root / "folder")], output, f"full-{attempt}")
            assert summary["scored"] == count, summary
            large.add(count / run.seconds, run.cpu_seconds * 1000 / count)
            memory.add(run.peak_mib)
        report.rows += [naive.row(), large.row(), memory.row()]
        report.ratio("score ours/naive (115k)", large.median / naive.median, f"{large.median / naive.median:.2f}x")
        report.ratio("score peak memory 115k/23k", memory.median / small_memory.median,
                     f"{memory.median / small_memory.median:.2f}x ({count:,} vs {len(pets):,} files)")

        # The hourly CronJob's case: 500 new files (copies: new files, as arrivals are) in the scored folder.
        new = root / "folder" / "new"
        alone = root / "alone"
        sources = subset("kaggle-fullres", 500)
        for path in sources:
            for where in (new, alone):
                (where / path.parent.name).mkdir(parents=True, exist_ok=True)
                shutil.copy(path, where / path.parent.name / path.name)
        state = output / "_incremental"
        snapshot = root / "state-snapshot"
        shutil.copytree(state, snapshot)
        incremental = Figure(f"ours: 500 new files in the {count:,} already scored (--skip_scored)", "s")
        incremental_memory = Figure("ours: peak memory, 500 new files in the scored folder", "MiB")
        first = Figure("ours: the 500 files alone, a first run", "s")
        first_memory = Figure("ours: peak memory, the 500 alone", "MiB")
        naive_small = Figure("naive script end to end, the 500 files", "s")
        exact = True
        for attempt in range(args.repeats):
            shutil.rmtree(state)
            shutil.copytree(snapshot, state)  # each repeat starts from the state the full run left
            summary, run = ours(model_root, [str(root / "folder")], output, f"hourly-{attempt}")
            exact &= summary["scored"] + summary["failed"] == len(sources) and summary["skipped"] == count
            incremental.add(run.seconds, run.cpu_seconds * 1000 / len(sources))
            incremental_memory.add(run.peak_mib)
            alone_out = temp_dir("alone-out")
            try:
                summary, run = ours(model_root, [str(alone)], alone_out, "alone")
            finally:
                remove(alone_out)
            first.add(run.seconds, run.cpu_seconds * 1000 / len(sources))
            first_memory.add(run.peak_mib)
            naive_small.add(naive_script(model_root, sorted(p for p in alone.rglob("*") if p.is_file()))[2])
        report.rows += [incremental.row(), incremental_memory.row(), first.row(), first_memory.row(), naive_small.row()]
        report.ratio("score incremental scored exactly 500", float(exact),
                     "yes: 500 scored, every earlier file skipped" if exact else "NO")
        report.ratio("score incremental wall / 500 alone", incremental.median / first.median,
                     f"{incremental.median / first.median:.2f}x")
        report.ratio("score incremental memory / 500 alone", incremental_memory.median / first_memory.median,
                     f"{incremental_memory.median / first_memory.median:.2f}x")
        report.ratio("score 500 / naive script", incremental.median / naive_small.median,
                     f"{incremental.median / naive_small.median:.2f}x (the CronJob's incremental run, "
                     f"{incremental.median:.1f} s, against {naive_small.median:.1f} s)")
    finally:
        remove(root)
        remove(output)
