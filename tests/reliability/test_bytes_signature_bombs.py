"""Case 1 for TF Serving users: the export's bytes signature refuses an image over the pixel limit from its header,
before decoding it, as the Pillow path does (tests/reliability/test_decoder_abuse.py).

The limit is baked into the graph when the model is exported (model_contract.MAX_IMAGE_PIXELS, 50 MP); here it is
lowered to 10,000 pixels so that images just over it are small, and the exported SavedModel is loaded back and called
as a server would call it.
"""

import io
import struct

import numpy as np
import pytest
from PIL import Image

from tests.beam_pipelines.test_score import export_tiny_model
from trainer import model_contract

LIMIT = 10_000


def encode(format_name: str, side: int) -> bytes:
    pixels = np.random.default_rng(side).integers(0, 255, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=format_name)
    return buffer.getvalue()


def png_header_claiming(width: int, height: int) -> bytes:
    """The first bytes of a PNG whose IHDR claims width x height: a bomb's header (its data never arrives)."""
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))


@pytest.fixture(scope="module")
def bytes_signature(tmp_path_factory):
    import tensorflow as tf

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(model_contract, "MAX_IMAGE_PIXELS", LIMIT)
        published = export_tiny_model(tmp_path_factory.mktemp("model") / "export")
    loaded = tf.saved_model.load(published)
    return lambda images: loaded.signatures["serving_default"](image_bytes=tf.constant(images))


def refusal(bytes_signature, data: bytes) -> str:
    import tensorflow as tf

    with pytest.raises(tf.errors.InvalidArgumentError) as refused:
        bytes_signature([data])
    return refused.value.message


def test_images_over_the_limit_are_refused_from_their_header_and_those_under_it_scored(bytes_signature):
    under = bytes_signature([encode("JPEG", 90), encode("PNG", 99)])  # 8,100 and 9,801 pixels
    assert under["probability"].shape == (2,)
    for name, data in (("png", encode("PNG", 101)), ("jpeg", encode("JPEG", 120)), ("bmp", encode("BMP", 110))):
        message = refusal(bytes_signature, data)
        assert f"claims more pixels than this model decodes ({LIMIT})" in message, name


def test_a_gif_frame_larger_than_its_screen_is_counted(bytes_signature):
    data = encode("GIF", 150)
    small_screen = data[:6] + struct.pack("<HH", 8, 8) + data[10:]  # TensorFlow's canvas is the frame's 150x150
    assert "claims more pixels" in refusal(bytes_signature, small_screen)


def test_a_bomb_header_is_refused_before_any_pixel_buffer_exists(bytes_signature):
    message = refusal(bytes_signature, png_header_claiming(30000, 30000))
    assert "claims more pixels" in message and "900000000" in message
    assert "not a JPEG, PNG, GIF, BMP or WebP" in refusal(bytes_signature, b"II*\x00 a TIFF header")
