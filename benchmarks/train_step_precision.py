"""Steady training-step time of resnet_lite (default width and depth) at 128x128 (batch 64) on random data, under
one Keras precision policy, with or without XLA: whether bfloat16 (the CPU's avx512_bf16) or jit_compile buys epochs.

    .venv/bin/python -m benchmarks.train_step_precision float32 [--jit]
    .venv/bin/python -m benchmarks.train_step_precision mixed_bfloat16

Run the policies one after the other on an otherwise idle machine and compare within one sitting. Cost: about a
minute each. docs/TRAINING.md ("Recipe options") has the result.
"""

import argparse
import time

import numpy as np


def step_seconds(policy: str, jit: bool, steps: int = 40, batch: int = 64) -> float:
    import keras

    from trainer import config as config_lib
    from trainer import models, train

    keras.mixed_precision.set_global_policy(policy)
    cfg = config_lib.TrainConfig(data_dir="unused", model_dir="unused")
    model = models.build_model(cfg, [128, 128])
    train.compile_model(model, cfg, 1e-3)
    model.jit_compile = jit
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (batch * steps, 128, 128, 3)).astype("float32")
    labels = rng.integers(0, 2, (batch * steps, 1)).astype("float32")
    model.fit(images[:batch * 5], labels[:batch * 5], batch_size=batch, epochs=1, verbose=0)  # trace, warm up
    start = time.perf_counter()
    model.fit(images, labels, batch_size=batch, epochs=1, verbose=0)
    return (time.perf_counter() - start) / steps


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("policy", choices=["float32", "mixed_bfloat16", "mixed_float16"])
    parser.add_argument("--jit", action="store_true", help="XLA (Keras turns it off on CPU-only machines by default)")
    args = parser.parse_args(argv)
    seconds = step_seconds(args.policy, args.jit)
    print(f"{args.policy} jit={args.jit}: {seconds * 1000:.0f} ms/step, {64 / seconds:.0f} img/s")


if __name__ == "__main__":
    main()
