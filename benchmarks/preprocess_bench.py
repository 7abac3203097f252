"""Preprocessing section: the Beam job end to end, as `make preprocess` runs it, against (a) the shared
decode-resize-encode in a plain process pool (the limit) and (b) a naive one-process Pillow loop; and at scale, the
job's peak memory on 115,000 distinct photos beside the 23,000 of pets-180."""

import concurrent.futures
import functools
import io
import os
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

TRANSFORMS = ("FLIP_LEFT_RIGHT", "FLIP_TOP_BOTTOM", "ROTATE_180", "TRANSPOSE")  # each a distinct photo to the job


def _decode_resize_encode(path: str, size: int) -> int:
    from beam_pipelines import imaging

    pixels = imaging.decode_image(Path(path).read_bytes(), (size, size)).pixels
    return len(imaging.encode_jpeg(pixels))


def limit_rate(paths: list[Path], size: int, workers: int):
    """The shared decode-resize-encode function in a plain process pool: nothing else in the way."""
    start = time.perf_counter()
    with CpuClock() as cpu, concurrent.futures.ProcessPoolExecutor(workers) as pool:
        list(pool.map(_decode_resize_encode, map(str, paths), [size] * len(paths), chunksize=64))
    return len(paths) / (time.perf_counter() - start), cpu.seconds * 1000 / len(paths)


def naive_rate(paths: list[Path], size: int):
    """What a user would write first: one process, full decode, full-size resize, encode, write."""
    from PIL import Image

    with tempfile.TemporaryDirectory() as out, CpuClock() as cpu:
        start = time.perf_counter()
        for i, path in enumerate(paths):
            image = Image.open(path).convert("RGB").resize((size, size))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=95)
            Path(out, f"{i}.jpg").write_bytes(buffer.getvalue())
        seconds = time.perf_counter() - start
    return len(paths) / seconds, cpu.seconds * 1000 / len(paths)


def ours(inputs: list[str], count: int, mode: str = "in_memory", workers: int = 2):
    """The job as `make preprocess` runs it (the DirectRunner in one process, decoding in a child), or with
    --direct_running_mode multi_processing: (images/s, CPU ms per image, peak MiB of the process tree)."""
    out = temp_dir("preprocess-out")
    try:
        command = [PYTHON, "-m", "beam_pipelines.preprocess", *sum((["--input", i] for i in inputs), []),
                   "--output_dir", str(out / "data"), "--runner", "DirectRunner"]
        if mode != "in_memory":
            command += ["--direct_running_mode", mode, "--direct_num_workers", str(workers)]
        run = run_command(command)
    finally:
        remove(out)
    return count / run.seconds, run.cpu_seconds * 1000 / count, run.peak_mib


def _transformed(item) -> None:
    from PIL import Image

    source, target, transform = item
    with Image.open(source) as image:
        image.transpose(getattr(Image.Transpose, transform)).save(target, format="JPEG", quality=95)


def distinct_photos(paths: list[Path], root: Path) -> Path:
    """pets-180 and four transformed copies of it (flipped, rotated, transposed: new content hashes and perceptual
    hashes, so five distinct photos each), under root; the originals are hard links."""
    link_folder(paths, root)
    jobs = []
    for transform in TRANSFORMS:
        for path in paths:
            target = root / transform.lower() / path.parent.name / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            jobs.append((str(path), str(target), transform))
    with concurrent.futures.ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(_transformed, jobs, chunksize=256))
    return root


def run(args, report) -> None:
    workers = os.cpu_count() or 1
    for folder, limit in (("pets-180", args.pets_limit), ("kaggle-fullres", None)):
        paths = subset(folder, limit)
        images = link_folder(paths, temp_dir(f"preprocess-{folder}")) if limit else SHARED / folder
        print(f"preprocess {folder}: {len(paths)} photos", flush=True)
        limit_fig = repeat(Figure(f"limit: decode-resize-encode, {workers} processes ({folder})", "img/s"),
                           args.repeats, functools.partial(limit_rate, paths, 180, workers))
        naive = repeat(Figure(f"naive: Pillow loop, 1 process ({folder})", "img/s"), args.repeats,
                       functools.partial(naive_rate, paths, 180))
        ours_fig = Figure(f"ours: Beam preprocess end to end, as make preprocess runs it ({folder})", "img/s")
        memory = Figure(f"ours: peak memory of the process tree ({folder}, {len(paths):,} photos)", "MiB")
        for _ in range(args.repeats):
            rate, cpu_ms, peak = ours([str(images)], len(paths))
            ours_fig.add(rate, cpu_ms)
            memory.add(peak)
        report.rows += [limit_fig.row(), naive.row(), ours_fig.row(), memory.row()]
        if folder == "pets-180":
            multi = Figure(f"ours, --direct_running_mode multi_processing, {workers} workers ({folder})", "img/s")
            for _ in range(args.repeats):
                rate, cpu_ms, _ = ours([str(images)], len(paths), "multi_processing", workers)
                multi.add(rate, cpu_ms)
            report.rows.append(multi.row())
            small_memory = memory
        total, work = ours_fig.median_cpu_ms, limit_fig.median_cpu_ms
        report.note(f"where preprocessing's CPU goes ({folder})",
                    f"{total:.2f} ms/image = decode-resize-encode {work:.2f} + hashing, grouping, Beam, IPC and "
                    f"start-up {total - work:.2f}")
        report.ratio(f"preprocess ours/limit ({folder})", ours_fig.median / limit_fig.median,
                     f"{ours_fig.median / limit_fig.median:.0%}")
        report.ratio(f"preprocess ours/naive ({folder})", ours_fig.median / naive.median,
                     f"{ours_fig.median / naive.median:.2f}x")
    if args.skip_scale:
        report.left_out = True
        return
    paths = subset("pets-180", args.pets_limit)
    root = temp_dir("preprocess-scale")
    try:
        print(f"preprocess scale: making {len(paths) * (1 + len(TRANSFORMS)):,} distinct photos", flush=True)
        distinct_photos(paths, root)
        count = len(paths) * (1 + len(TRANSFORMS))
        large = Figure(f"ours: Beam preprocess end to end ({count:,} distinct photos)", "img/s")
        large_memory = Figure(f"ours: peak memory of the process tree ({count:,} photos)", "MiB")
        for _ in range(args.scale_repeats):
            rate, cpu_ms, peak = ours([str(root)], count)
            large.add(rate, cpu_ms)
            large_memory.add(peak)
        report.rows += [large.row(), large_memory.row()]
        report.ratio("preprocess peak memory 115k/23k", large_memory.median / small_memory.median,
                     f"{large_memory.median / small_memory.median:.2f}x ({count:,} vs {len(paths):,} photos)")
    finally:
        remove(root)
