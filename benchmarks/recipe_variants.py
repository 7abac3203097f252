"""Scores one finished training run's weights on the VALIDATION split under each evaluation variant: the best
checkpoint vs the moving average of the weights (--ema_momentum), with and without flip test-time augmentation,
at the training resolution and above it. What docs/TRAINING.md's recipe table was made from; never the test split.

    .venv/bin/python -m benchmarks.recipe_variants /work/runs/exp-ls0 [--sides 128 144 160]

Cost: one validation pass (2,336 pets-180 images) per variant, 10-30 s each on 2 cores.
"""

import argparse
import dataclasses
import json
import os

from trainer import config as config_lib
from trainer import data, evaluate, model_dir, models


def score(run_dir: str, sides, ttas=("none", "flip")) -> list[dict]:
    import keras

    with open(os.path.join(run_dir, model_dir.CONFIG_FILE)) as handle:
        resolved = json.load(handle)
    cfg = config_lib.TrainConfig(**resolved["config"])
    image_size = resolved["image_size"]
    batches = data.make_dataset(cfg.data_dir, "validation", training=False, image_size=image_size, batch_size=64)
    rows = []
    for weights_name, path in (("best_checkpoint", model_dir.BEST_WEIGHTS), ("ema", model_dir.EMA_WEIGHTS)):
        path = os.path.join(run_dir, path)
        if not os.path.exists(path):
            continue
        for side in sides:
            keras.backend.clear_session()
            # Loaded into the network as trained, then copied by position (as final_model.float32_copy does): at the
            # dataset's own side the model has no Resizing wrapper, so the saved file's layer paths would not match.
            # With progressive resizing the best checkpoint is the any-side training network's (the average is
            # saved from the served model).
            progressive = resolved.get("progressive_start_side", cfg.progressive_resize_from)  # older runs: the flag
            any_size = bool(progressive) and weights_name == "best_checkpoint"
            trained = models.build_model(dataclasses.replace(cfg, weights=None), image_size, any_size=any_size)
            trained.load_weights(path)
            model = models.build_model(dataclasses.replace(cfg, input_size=side, weights=None), image_size)
            model.set_weights(trained.get_weights())
            for tta in ttas:
                labels, probabilities = evaluate.predict(model, batches, tta=tta)
                metrics = evaluate.compute_metrics(labels, probabilities, resolved["class_names"])
                rows.append({"weights": weights_name, "side": side, "tta": tta, "accuracy": metrics["accuracy"],
                             "log_loss": metrics["log_loss"], "examples": metrics["examples"]})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("run_dir", help="a finished --model_dir (config.json and checkpoints/ are read)")
    parser.add_argument("--sides", type=int, nargs="+", default=[128, 144, 160],
                        help="sides to evaluate at, in pixels, up to the dataset's (default: %(default)s)")
    args = parser.parse_args(argv)
    rows = score(args.run_dir, args.sides)
    with open(os.path.join(args.run_dir, "validation_variants.json"), "w") as handle:
        json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
