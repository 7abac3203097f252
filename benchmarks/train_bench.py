"""Training section: the tf.data input pipeline alone against the models' training step rate, the share of the
training loop blocked on input, and MirroredStrategy over two logical CPU devices against the default strategy."""

import functools
import subprocess
import time

from benchmarks.harness import PYTHON, ROOT, Figure, link_folder, repeat, subset, temp_dir

BATCH = 64  # the trainer's default per-replica batch


def build(arch: str, size: int = 180, model: bool = True):
    """The trainer's config for arch with its defaults, and the model for size x size records (or None)."""
    from trainer import config as config_lib
    from trainer import models

    cfg = config_lib.TrainConfig(data_dir="unused", model_dir="unused", model=arch)
    return cfg, models.build_model(cfg, (size, size)) if model else None


def preprocessed(limit: int) -> str:
    """`limit` pets-180 photos preprocessed once (the input pipeline caches them: speed doesn't need all 23k)."""
    images = link_folder(subset("pets-180", limit), temp_dir("train-images"))
    out = temp_dir("train-data") / "data"
    subprocess.run([PYTHON, "-m", "beam_pipelines.preprocess", "--input", str(images), "--output_dir", str(out),
                    "--runner", "DirectRunner"], cwd=ROOT, check=True, capture_output=True)
    return str(out)


def train_dataset(data_dir: str, size):
    """The trainer's augmented training pipeline at the network's working size, cache on, after one full pass
    (so the cache is filled and decoding is not counted: in a real run it happens in the first epoch only)."""
    from trainer import data

    metadata = data.read_metadata(data_dir)
    count = data.split_size(metadata, "train")
    dataset = data.make_dataset(data_dir, "train", image_size=metadata["image_size"], batch_size=BATCH, training=True,
                                cache=True, shuffle_buffer=count, resize_to=size)
    iterator = iter(dataset)
    for _ in range(count // BATCH + 1):
        next(iterator)
    return dataset, iterator


def network_size(arch: str):
    cfg, _ = build(arch, model=False)
    return cfg.model_input_size((180, 180))


def input_rate(data_dir: str, batches: int) -> float:
    _, iterator = train_dataset(data_dir, network_size("resnet_lite"))
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * BATCH / (time.perf_counter() - start)


def step_rate(arch: str, data_dir: str | None, steps: int) -> float:
    """Training images/s of arch: on one repeated in-memory batch (the model's own rate) or, with data_dir,
    on the real augmented input pipeline."""
    import tensorflow as tf

    from trainer import train

    cfg, model = build(arch)
    size = cfg.model_input_size((180, 180))
    train.compile_model(model, cfg, 1e-3)
    if data_dir:
        dataset, _ = train_dataset(data_dir, size)
    else:
        images = tf.random.uniform((BATCH, *size, 3), 0, 255)
        dataset = tf.data.Dataset.from_tensors((images, tf.cast(tf.range(BATCH) % 2, tf.float32))).repeat()
    model.fit(dataset, steps_per_epoch=3, epochs=1, verbose=0)  # tracing and warm-up
    start = time.perf_counter()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    return steps * BATCH / (time.perf_counter() - start)


def input_wait_share(arch: str, data_dir: str, steps: int) -> float:
    """The share of training-loop time spent blocked on the next batch: the input pipeline (prefetching) against
    train_on_batch, timed separately, step by step. On 2 cores the pipeline's work also slows the step itself
    (both share the cores); that shows in the fed-vs-in-memory step rates, not here."""
    from trainer import train

    cfg, model = build(arch)
    train.compile_model(model, cfg, 1e-3)
    _, iterator = train_dataset(data_dir, cfg.model_input_size((180, 180)))
    for _ in range(3):  # tracing and warm-up
        model.train_on_batch(*next(iterator))
    waiting, start = 0.0, time.perf_counter()
    for _ in range(steps):
        fetch = time.perf_counter()
        images, labels = next(iterator)
        waiting += time.perf_counter() - fetch
        model.train_on_batch(images, labels)
    return waiting / (time.perf_counter() - start)


def strategy_rate(devices: int, steps: int) -> float:
    result = subprocess.run([PYTHON, "-m", "benchmarks.strategy_rate", str(devices), str(steps)], cwd=ROOT,
                            check=True, capture_output=True, text=True)
    return float(result.stdout.strip().splitlines()[-1])


def run(args, report) -> None:
    data_dir = preprocessed(args.train_limit)
    print(f"train: dataset {data_dir}", flush=True)
    pipeline = repeat(Figure(f"input pipeline alone (augmented, cached, batch {BATCH})", "img/s"), args.repeats,
                      functools.partial(input_rate, data_dir, 60))
    report.rows.append(pipeline.row())
    for arch in ("seed_cnn", "resnet_lite"):
        alone = repeat(Figure(f"{arch} training step, in-memory batch", "img/s"), args.repeats,
                       functools.partial(step_rate, arch, None, args.train_steps))
        fed = repeat(Figure(f"{arch} training step, real input pipeline", "img/s"), args.repeats,
                     functools.partial(step_rate, arch, data_dir, args.train_steps))
        wait = repeat(Figure(f"{arch}: share of loop time blocked on the next batch", "%"), args.repeats,
                      lambda arch=arch: 100 * input_wait_share(arch, data_dir, args.train_steps))
        slowdown = max(0.0, 1 - fed.median / alone.median)
        report.rows += [alone.row(), fed.row(), wait.row()]
        report.ratio(f"train input/consumption ({arch})", pipeline.median / alone.median,
                     f"{pipeline.median / alone.median:.1f}x")
        report.ratio(f"train input wait share ({arch})", wait.median / 100,
                     f"{wait.median / 100:.1%} blocked on input; the fed step rate is {slowdown:.0%} below the "
                     f"in-memory one (measured apart; on 2 cores the pipeline also takes CPU from the step)")
    for devices in (1, 2):
        name = "default strategy" if devices == 1 else f"MirroredStrategy over {devices} logical CPUs"
        report.rows.append(repeat(Figure(f"seed_cnn training, {name}", "img/s"), args.repeats,
                                  functools.partial(strategy_rate, devices, args.train_steps)).row())
