"""Generated test images: an easy two-class task and a zoo of bad and odd files.

Everything is made by code under a test's tmp_path; nothing here is committed as a blob.
"""

import io
import random
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from beam_pipelines import imaging


def easy_pixels(label: int, seed: int, size: int = 64) -> np.ndarray:
    """Class 0 has horizontal stripes, class 1 vertical ones; colours and phase vary with the seed."""
    rng = np.random.default_rng(seed)
    period = int(rng.integers(6, 12))
    phase = int(rng.integers(0, period))
    ramp = ((np.arange(size) + phase) // (period // 2)) % 2
    mask = np.tile(ramp[:, None], (1, size)) if label == 0 else np.tile(ramp[None, :], (size, 1))
    low, high = rng.integers(0, 90, 3), rng.integers(160, 256, 3)
    pixels = np.where(mask[..., None] == 1, high, low).astype(np.int16)
    pixels += rng.integers(-12, 13, pixels.shape).astype(np.int16)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def photo_pixels(seed: int, size: int = 96) -> np.ndarray:
    """A smooth, photo-like picture (blurry colour blobs): its perceptual hash is stable under re-encoding,
    as a real photo's is, where flat synthetic stripes would leave the hash to noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (6, 6, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC))


def encode(pixels: np.ndarray, fmt: str = "JPEG", **params) -> bytes:
    return encode_image(Image.fromarray(pixels), fmt, **params)


def write_easy_dataset(root: Path, per_class: int, class_dirs=("cat", "dog"), size: int = 64,
                       seed: int = 0) -> list[Path]:
    """Writes per_class JPEGs into root/<class_dir>/, each a distinct picture. Returns the paths."""
    paths = []
    for label, class_dir in enumerate(class_dirs):
        folder = root / class_dir
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            path = folder / f"{i}.jpg"
            path.write_bytes(encode(easy_pixels(label, seed * 100_000 + label * 10_000 + i, size), quality=92))
            paths.append(path)
    return paths


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A small PNG whose header claims width x height pixels (900 MP by default)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


def gif_with_huge_frame() -> bytes:
    """A GIF with a 10x10 logical screen whose one frame claims a 30000x30000 extent."""
    screen = b"GIF89a" + struct.pack("<HHBBB", 10, 10, 0x00, 0, 0)
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 30000, 30000, 0x80) + b"\x00\x00\x00\xff\xff\xff"
    return screen + frame + b"\x02\x02\x44\x01\x00" + b"\x3b"


def _exif_rotated_jpeg() -> bytes:
    """A 40x20 picture stored sideways with EXIF orientation 6 (rotate 90 degrees clockwise to view)."""
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes(), quality=95)
    return buffer.getvalue()


def odd_files() -> dict[str, tuple[bytes, str | None]]:
    """Relative path -> (content, expected rejection reason, or None for files that must decode)."""
    rng = random.Random(7)
    photo = easy_pixels(1, 99, 48)
    good_jpeg = encode(photo, quality=90)
    cmyk = io.BytesIO()
    Image.fromarray(photo).convert("CMYK").save(cmyk, format="JPEG")
    grey16 = Image.fromarray(np.arange(48 * 48, dtype=np.uint16).reshape(48, 48) * 20)
    animated = io.BytesIO()
    frames = [Image.fromarray(easy_pixels(i % 2, i, 32)) for i in range(3)]
    frames[0].save(animated, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    rgba = np.dstack([photo, np.full(photo.shape[:2], 128, np.uint8)])
    tiff, ico = io.BytesIO(), io.BytesIO()
    Image.fromarray(photo).save(tiff, format="TIFF")
    Image.fromarray(photo).save(ico, format="ICO")
    return {
        # bad files
        "dog/zero_bytes.jpg": (b"", imaging.EMPTY),
        "dog/truncated.jpg": (good_jpeg[: len(good_jpeg) // 2], imaging.TRUNCATED),
        "dog/random_bytes.jpg": (bytes(rng.randrange(256) for _ in range(2048)), imaging.NOT_AN_IMAGE),
        "dog/notes.jpg": (b"just some text, not a picture\n" * 10, imaging.NOT_AN_IMAGE),
        "dog/page.png": (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", imaging.NOT_AN_IMAGE),
        "dog/bomb.png": (png_bomb(), imaging.TOO_MANY_PIXELS),
        "dog/huge_frame.gif": (gif_with_huge_frame(), imaging.TOO_MANY_PIXELS),
        "dog/Thumbs.db": (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(500), imaging.NOT_AN_IMAGE),
        "dog/.DS_Store": (b"\x00\x00\x00\x01Bud1" + bytes(300), imaging.NOT_AN_IMAGE),
        "dog/scan.jpg": (tiff.getvalue(), imaging.UNSUPPORTED_FORMAT),
        "dog/favicon.jpg": (ico.getvalue(), imaging.UNSUPPORTED_FORMAT),
        "dog/document.jpg": (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", imaging.UNSUPPORTED_FORMAT),
        "dog/bad_header.png": (b"\x89PNG\r\n\x1a\n" + bytes(40), imaging.DECODE_ERROR),
        # odd but good files
        "dog/cmyk.jpg": (cmyk.getvalue(), None),
        "dog/grey16.png": (encode_image(grey16, "PNG"), None),
        "dog/greyscale.jpg": (encode(photo[..., 0]), None),
        "dog/animated.gif": (animated.getvalue(), None),
        "dog/rgba.png": (encode(rgba, "PNG"), None),
        "dog/palette.gif": (encode_image(Image.fromarray(photo).convert("P"), "GIF"), None),
        "dog/exif_rotated.jpg": (_exif_rotated_jpeg(), None),
        "dog/really_a_png.jpg": (encode(photo, "PNG"), None),
        "dog/photo.webp": (encode(photo, "WEBP"), None),
        "dog/photo.bmp": (encode(photo, "BMP"), None),
        "dog/with space, comma.jpg": (encode(easy_pixels(1, 101, 48)), None),
        'dog/quote"and\'apostrophe.jpg': (encode(easy_pixels(1, 102, 48)), None),
        "dog/ünïcödé-猫.jpg": (encode(easy_pixels(1, 103, 48)), None),
        "dog/nested/deeper/photo.JPG": (encode(easy_pixels(1, 104, 48)), None),
        "Cats/uppercase_plural.jpg": (encode(easy_pixels(0, 105, 48)), None),
    }


def encode_image(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def write_odd_files(root: Path) -> dict[Path, str | None]:
    """Writes odd_files() under root. Returns absolute path -> expected rejection reason (None: good)."""
    expected = {}
    for relative, (content, reason) in odd_files().items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        expected[path] = reason
    return expected
