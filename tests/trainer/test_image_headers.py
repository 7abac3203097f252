"""trainer/image_headers.py: the pixel count each format's header claims, eagerly and inside tf.data (they differ more
often than you'd think), for the formats tf.io.decode_image reads."""

import io
import struct

import numpy as np
import pytest
from PIL import Image

from trainer import image_headers


def encode(format_name: str, size=(40, 30), **options) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=format_name, **options)
    return buffer.getvalue()


def animated(format_name: str, sizes) -> bytes:
    frames = [Image.fromarray(np.full((h, w, 3), 40 * i, np.uint8)) for i, (w, h) in enumerate(sizes)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format=format_name, save_all=True, append_images=frames[1:])
    return buffer.getvalue()


def gif_with_screen(data: bytes, width: int, height: int) -> bytes:
    """The same GIF with another logical screen size (its frames keep theirs)."""
    return data[:6] + struct.pack("<HH", width, height) + data[10:]


def bmp_core_header(width: int, height: int) -> bytes:
    """A BMP with the 12-byte OS/2 core header (16-bit width and height), 24 bits per pixel."""
    row = (width * 3 + 3) // 4 * 4
    header = struct.pack("<IHHHH", 12, width, height, 1, 24)
    return b"BM" + struct.pack("<IHHI", 26 + row * height, 0, 0, 26) + header + b"\0" * row * height


CASES = {
    "jpeg": (encode("JPEG"), 1200),
    "progressive jpeg": (encode("JPEG", progressive=True), 1200),
    "png": (encode("PNG"), 1200),
    "gif": (encode("GIF"), 1200),
    "bmp": (encode("BMP"), 1200),
    "bmp, core header": (bmp_core_header(7, 5), 35),
    "webp, lossy": (encode("WEBP"), 1200),
    "webp, lossless": (encode("WEBP", lossless=True), 1200),
    "webp, extended (animated)": (animated("WEBP", [(40, 30), (40, 30)]), 1200),
    # giflib allocates every frame: three frames of 40x30 claim 3600 pixels
    "animated gif": (animated("GIF", [(40, 30)] * 3), 3600),
    # TensorFlow sizes a GIF's canvas by its largest frame, not by the screen: a 4x4 screen over a 200x100 frame
    "gif frame larger than its screen": (gif_with_screen(encode("GIF", (200, 100)), 4, 4), 20000),
    "not an image": (b"hello, world", image_headers.UNKNOWN_FORMAT),
    "tiff": (encode("TIFF"), image_headers.UNKNOWN_FORMAT),
    "truncated png": (encode("PNG")[:10], image_headers.UNREADABLE_HEADER),
}


@pytest.mark.parametrize("name", list(CASES))
def test_claimed_pixels_eagerly_and_inside_tf_data(name):
    import tensorflow as tf

    data, expected = CASES[name]
    assert int(image_headers.claimed_pixels(tf.constant(data))) == expected
    dataset = tf.data.Dataset.from_tensor_slices([data, data]).map(image_headers.claimed_pixels)
    assert [int(v) for v in dataset] == [expected, expected]


def test_check_pixel_limit_passes_the_data_or_says_why_not():
    import tensorflow as tf

    @tf.function
    def check(data):
        return image_headers.check_pixel_limit(data, 1500)

    assert check(tf.constant(CASES["png"][0])).numpy() == CASES["png"][0]
    for name, message in (("animated gif", "claims more pixels than this model decodes (1500)"),
                          ("not an image", "not a JPEG, PNG, GIF, BMP or WebP file"),
                          ("truncated png", "header cannot be read")):
        with pytest.raises(tf.errors.InvalidArgumentError, match=message.replace("(", r"\(").replace(")", r"\)")):
            check(tf.constant(CASES[name][0]))
