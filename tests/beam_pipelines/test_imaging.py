import numpy as np
import pytest
from PIL import Image

from beam_pipelines import imaging
from tests import corpus


@pytest.mark.parametrize("relative", sorted(corpus.odd_files()))
def test_each_odd_file_is_decoded_or_rejected_for_its_reason(relative):
    content, expected_reason = corpus.odd_files()[relative]
    if expected_reason is None:
        decoded = imaging.decode_image(content, (24, 32))
        assert decoded.pixels.shape == (24, 32, 3)
        assert decoded.pixels.dtype == np.uint8
        assert decoded.source_format in imaging.ALLOWED_FORMATS
    else:
        with pytest.raises(imaging.ImageRejected) as rejected:
            imaging.decode_image(content, (24, 32))
        assert rejected.value.reason == expected_reason
        assert rejected.value.detail


def test_exif_orientation_is_applied():
    content, _ = corpus.odd_files()["dog/exif_rotated.jpg"]
    pixels = imaging.decode_image(content, (40, 20)).pixels  # stored 40 wide x 20 high, viewed 20 x 40
    top, bottom = pixels[:20].mean(axis=(0, 1)), pixels[20:].mean(axis=(0, 1))
    # The red left half of the stored picture is the top half once rotated 90 degrees clockwise.
    assert top[0] > 200 and top[1] < 60
    assert bottom[0] < 60


def test_sixteen_bit_greyscale_is_scaled_not_clipped():
    ramp = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    content = corpus.encode_image(Image.fromarray(ramp), "PNG")
    pixels = imaging.decode_image(content, (64, 64)).pixels
    assert pixels[0, 0, 0] < 10 and pixels[-1, -1, 0] > 245
    assert 100 < pixels.mean() < 155


def test_transparency_becomes_white():
    rgba = np.zeros((8, 8, 4), np.uint8)  # fully transparent black
    pixels = imaging.decode_image(corpus.encode(rgba, "PNG"), (8, 8)).pixels
    assert (pixels == 255).all()


def test_pixel_limit_is_a_parameter():
    content = corpus.encode(corpus.easy_pixels(0, 1, 64), "PNG")
    imaging.decode_image(content, (8, 8), max_pixels=64 * 64)
    with pytest.raises(imaging.ImageRejected) as rejected:
        imaging.decode_image(content, (8, 8), max_pixels=64 * 64 - 1)
    assert rejected.value.reason == imaging.TOO_MANY_PIXELS


def test_large_jpeg_uses_reduced_scale_decoding_and_matches_full_decode_closely():
    big = np.kron(corpus.easy_pixels(1, 5, 100), np.ones((8, 8, 1), np.uint8))  # 800x800, smooth blocks
    content = corpus.encode(big, quality=95)
    fast = imaging.decode_image(content, (90, 90)).pixels
    full = np.asarray(Image.open(corpus.io.BytesIO(content)).convert("RGB").resize((90, 90), imaging.RESAMPLE))
    assert np.abs(fast.astype(int) - full.astype(int)).mean() < 6


def test_truncated_images_are_never_padded_silently(monkeypatch):
    monkeypatch.setattr(imaging.ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        imaging.decode_image(corpus.encode(corpus.easy_pixels(0, 1, 16)), (8, 8))


def test_hashes_identify_content_and_group_near_copies():
    pixels = corpus.photo_pixels(3)
    recompressed = imaging.decode_image(corpus.encode(pixels, quality=70), (96, 96)).pixels
    assert imaging.content_hash(pixels) == imaging.content_hash(pixels.copy())
    assert imaging.content_hash(pixels) != imaging.content_hash(recompressed)
    near = imaging.hamming_distance(imaging.perceptual_hash(pixels), imaging.perceptual_hash(recompressed))
    far = imaging.hamming_distance(imaging.perceptual_hash(pixels), imaging.perceptual_hash(corpus.photo_pixels(4)))
    assert near <= 4 < 12 <= far


def test_jpeg_round_trip_keeps_the_picture():
    pixels = corpus.easy_pixels(1, 8, 64)
    again = imaging.decode_image(imaging.encode_jpeg(pixels), (64, 64)).pixels
    assert np.abs(again.astype(int) - pixels.astype(int)).mean() < 8
