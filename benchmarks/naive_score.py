"""The naive scoring script a user would write first, as the baseline of the scoring benchmark.

    python -m benchmarks.naive_score EXPORT_ROOT LISTING_FILE

One process: load the SavedModel, then for every 64 paths of the listing open each with Pillow, convert to RGB,
resize to 180x180 and run `serve_pixels` on the batch. No error handling, no outputs: only the work.
"""

import sys
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image


def main(root: str, listing_file: str) -> None:
    listing = Path(listing_file).read_text().splitlines()
    latest = Path(root, "latest")
    if latest.exists():  # an export root: its `latest` pointer names the version (JSON, or plain text before it)
        text = latest.read_text().strip()
        version = text if text.isdigit() else __import__("json").loads(text)["version"]
        root = str(Path(root, str(version)))
    signature = tf.saved_model.load(root).signatures["serve_pixels"]
    for i in range(0, len(listing), 64):
        pixels = np.stack([np.asarray(Image.open(p).convert("RGB").resize((180, 180))) for p in listing[i:i + 64]])
        signature(pixels=tf.constant(pixels))["probability"].numpy()


if __name__ == "__main__":
    main(*sys.argv[1:3])
