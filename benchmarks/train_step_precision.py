"""Steady training-step time of resnet_lite (default width and depth) at 128x128 (batch 64) on random data, under
one Keras precision policy, with or without XLA, with the fused batch norm or Keras' own: whether bfloat16 (the CPU's
avx512_bf16), jit_compile or trainer/fused_norm.py buys epochs. Prints wall and CPU time per step (the CPU time is
steadier on a shared, throttled machine).

    .venv/bin/python -m benchmarks.train_step_precision float32 [--jit] [--side 160] [--norm keras]
    .venv/bin/python -m benchmarks.train_step_precision mixed_bfloat16

Run the policies one after the other on an otherwise idle machine and compare within one sitting. Cost: about a
minute each. docs/TRAINING.md ("Recipe options") has the result.
"""

import argparse
import time

import numpy as np


def step_seconds(policy: str, jit: bool, steps: int = 40, batch: int = 64, side: int = 128,
                 norm: str = "fused") -> tuple[float, float]:
    """(wall seconds, CPU seconds) per training step."""
    import keras

    from trainer import config as config_lib
    from trainer import fused_norm, models, train

    keras.mixed_precision.set_global_policy(policy)
    if norm == "keras":  # what resnet_lite trained with before trainer/fused_norm.py
        fused_norm.FusedBatchNormalization = keras.layers.BatchNormalization
    cfg = config_lib.TrainConfig(data_dir="unused", model_dir="unused")
    model = models.build_model(cfg, [side, side])
    train.compile_model(model, cfg, 1e-3)
    model.jit_compile = jit
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (batch * steps, side, side, 3)).astype("float32")
    labels = rng.integers(0, 2, (batch * steps, 1)).astype("float32")
    model.fit(images[:batch * 5], labels[:batch * 5], batch_size=batch, epochs=1, verbose=0)  # trace, warm up
    start, cpu = time.perf_counter(), time.process_time()
    model.fit(images, labels, batch_size=batch, epochs=1, verbose=0)
    return (time.perf_counter() - start) / steps, (time.process_time() - cpu) / steps


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("policy", choices=["float32", "mixed_bfloat16", "mixed_float16"])
    parser.add_argument("--jit", action="store_true", help="XLA (Keras turns it off on CPU-only machines by default)")
    parser.add_argument("--side", type=int, default=128, help="image side in pixels (default: 128)")
    parser.add_argument("--norm", choices=["fused", "keras"], default="fused",
                        help="batch norm: fused (trainer/fused_norm.py, the default) or keras (Keras' own)")
    args = parser.parse_args(argv)
    seconds, cpu = step_seconds(args.policy, args.jit, side=args.side, norm=args.norm)
    print(f"{args.policy} jit={args.jit} side={args.side} norm={args.norm}: {seconds * 1000:.0f} ms/step "
          f"({cpu * 1000:.0f} CPU ms), {64 / seconds:.0f} img/s")


if __name__ == "__main__":
    main()
