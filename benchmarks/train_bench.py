"""Training section: the tf.data input pipeline alone against the models' training step rate, the share of the
training loop blocked on input, and MirroredStrategy over two logical CPU devices against the default strategy.
resnet_lite is measured at both sides the progressive default trains at: its start side (96, the first 40% of the
run, where the step eats the most images per second) and its network side (160)."""

import functools
import subprocess
import time

from benchmarks.harness import PYTHON, ROOT, Figure, link_folder, repeat, subset, temp_dir

BATCH = 64  # the trainer's default per-replica batch


def precision() -> str:
    """The dtype policy the trainer's default (--mixed_precision auto) picks on this machine, set for this process."""
    import keras
    import tensorflow as tf

    from trainer import distribute

    policy = distribute.precision_policy("auto", bool(tf.config.list_logical_devices("GPU")), distribute.cpu_has_amx())
    keras.mixed_precision.set_global_policy(policy)
    return policy


def build(arch: str, size: int = 180, model: bool = True, any_size: bool = False):
    """The trainer's config for arch with its defaults, and the model for size x size records (or None), under the
    trainer's default precision; any_size: the network alone, taking images of any side (the model progressive
    resizing trains)."""
    from trainer import config as config_lib
    from trainer import models

    cfg = config_lib.TrainConfig(data_dir="unused", model_dir="unused", model=arch)
    if not model:
        return cfg, None
    precision()
    return cfg, models.build_model(cfg, (size, size), any_size=any_size)


def preprocessed(limit: int) -> str:
    """`limit` pets-180 photos preprocessed once (the input pipeline caches them: speed doesn't need all 23k)."""
    images = link_folder(subset("pets-180", limit), temp_dir("train-images"))
    out = temp_dir("train-data") / "data"
    subprocess.run([PYTHON, "-m", "beam_pipelines.preprocess", "--input", str(images), "--output_dir", str(out),
                    "--runner", "DirectRunner"], cwd=ROOT, check=True, capture_output=True)
    return str(out)


def train_dataset(data_dir: str, size, side: int | None = None):
    """The trainer's augmented training pipeline at the network's working size, cache on, after one full pass
    (so the cache is filled and decoding is not counted: in a real run it happens in the first epoch only); side:
    batches resized to side x side as progressive resizing does (the trainer's int32 variable, held at side)."""
    import tensorflow as tf

    from trainer import data

    metadata = data.read_metadata(data_dir)
    count = data.split_size(metadata, "train")
    train_side = None if side is None else tf.Variable(side, dtype=tf.int32, trainable=False)
    dataset = data.make_dataset(data_dir, "train", image_size=metadata["image_size"], batch_size=BATCH, training=True,
                                cache=True, shuffle_buffer=count, resize_to=size, train_side=train_side)
    iterator = iter(dataset)
    for _ in range(count // BATCH + 1):
        next(iterator)
    return dataset, iterator


def network_size(arch: str):
    cfg, _ = build(arch, model=False)
    return cfg.model_input_size((180, 180))


def start_side(arch: str) -> int | None:
    """The side progressive resizing starts arch's training at by default (None: it trains at one side)."""
    cfg, _ = build(arch, model=False)
    return cfg.start_side((180, 180))


def input_rate(data_dir: str, batches: int, side: int | None = None) -> float:
    _, iterator = train_dataset(data_dir, network_size("resnet_lite"), side)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * BATCH / (time.perf_counter() - start)


def step_rate(arch: str, data_dir: str | None, steps: int, side: int | None = None) -> float:
    """Training images/s of arch: on one repeated in-memory batch (the model's own rate) or, with data_dir,
    on the real augmented input pipeline; side: at side x side, as in progressive resizing's phase at that side."""
    import tensorflow as tf

    from trainer import train

    cfg, model = build(arch, any_size=side is not None)
    size = cfg.model_input_size((180, 180))
    train.compile_model(model, cfg, 1e-3)
    if data_dir:
        dataset, _ = train_dataset(data_dir, size, side)
    else:
        images = tf.random.uniform((BATCH, *([side, side] if side else size), 3), 0, 255)
        dataset = tf.data.Dataset.from_tensors((images, tf.cast(tf.range(BATCH) % 2, tf.float32))).repeat()
    model.fit(dataset, steps_per_epoch=3, epochs=1, verbose=0)  # tracing and warm-up
    start = time.perf_counter()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    return steps * BATCH / (time.perf_counter() - start)


def input_wait_share(arch: str, data_dir: str, steps: int, side: int | None = None) -> float:
    """The share of training-loop time spent blocked on the next batch: the input pipeline (prefetching) against
    train_on_batch, timed separately, step by step. On 2 cores the pipeline's work also slows the step itself
    (both share the cores); that shows in the fed-vs-in-memory step rates, not here."""
    from trainer import train

    cfg, model = build(arch, any_size=side is not None)
    train.compile_model(model, cfg, 1e-3)
    _, iterator = train_dataset(data_dir, cfg.model_input_size((180, 180)), side)
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
    policy = precision()
    print(f"train: dataset {data_dir}, models under the trainer's default precision here: {policy}", flush=True)
    low = start_side("resnet_lite")
    pipelines = {}
    for side in (None, low):
        at = "" if side is None else f" resized to {side} (progressive start)"
        pipelines[side] = repeat(Figure(f"input pipeline alone (augmented, cached, batch {BATCH}){at}", "img/s"),
                                 args.repeats, functools.partial(input_rate, data_dir, 60, side))
        report.rows.append(pipelines[side].row())
    for arch, side in (("seed_cnn", None), ("resnet_lite", low), ("resnet_lite", None)):
        name = arch if side is None else f"{arch} at {side}"
        alone = repeat(Figure(f"{name} training step ({policy}), in-memory batch", "img/s"), args.repeats,
                       functools.partial(step_rate, arch, None, args.train_steps, side))
        fed = repeat(Figure(f"{name} training step ({policy}), real input pipeline", "img/s"), args.repeats,
                     functools.partial(step_rate, arch, data_dir, args.train_steps, side))
        wait = repeat(Figure(f"{name}: share of loop time blocked on the next batch", "%"), args.repeats,
                      lambda arch=arch, side=side: 100 * input_wait_share(arch, data_dir, args.train_steps, side))
        slowdown = max(0.0, 1 - fed.median / alone.median)
        report.rows += [alone.row(), fed.row(), wait.row()]
        report.ratio(f"train input/consumption ({name})", pipelines[side].median / alone.median,
                     f"{pipelines[side].median / alone.median:.1f}x")
        report.ratio(f"train input wait share ({name})", wait.median / 100,
                     f"{wait.median / 100:.1%} blocked on input; the fed step rate is {slowdown:.0%} below the "
                     f"in-memory one (measured apart; on 2 cores the pipeline also takes CPU from the step)")
    for devices in (1, 2):
        name = "default strategy" if devices == 1 else f"MirroredStrategy over {devices} logical CPUs"
        report.rows.append(repeat(Figure(f"seed_cnn training, {name}", "img/s"), args.repeats,
                                  functools.partial(strategy_rate, devices, args.train_steps)).row())
