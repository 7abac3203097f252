"""Decode, validate and resize one image: the single code path shared by preprocessing and scoring.

Training records and scoring inputs both come out of `decode_image`, so what the model sees in
production is what it saw in training. Pure Pillow and numpy: no TensorFlow import, cheap to start.

Every way an input can be unusable raises `ImageRejected` with a short machine-readable `reason`
(one of `REASONS`, also used as a Beam counter name) and a human-readable `detail`.
"""

import dataclasses
import hashlib
import io
import struct
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# Only these decoders ever see untrusted bytes. Pillow registers many more (TIFF, PSD, ICO, EPS, ...);
# each is attack surface we don't need for photos.
ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP")
DEFAULT_MAX_PIXELS = 50_000_000  # a 50 MP photo decodes to 150 MB of RGB; larger is a bomb, not a pet
RESAMPLE = Image.Resampling.BILINEAR  # matches tf.image.resize(method="bilinear", antialias=True)
JPEG_QUALITY = 95
_EXIF_ORIENTATION = 0x0112

EMPTY = "empty_file"
NOT_AN_IMAGE = "not_an_image"
UNSUPPORTED_FORMAT = "unsupported_format"
TOO_MANY_PIXELS = "too_many_pixels"
TRUNCATED = "truncated"
DECODE_ERROR = "decode_error"
REASONS = (EMPTY, NOT_AN_IMAGE, UNSUPPORTED_FORMAT, TOO_MANY_PIXELS, TRUNCATED, DECODE_ERROR)

# Signatures of formats we refuse, so a TIFF gets "unsupported_format: TIFF" instead of a shrug.
# Sniffed by hand: handing the bytes to Pillow's own TIFF/PSD/... parsers is what the allow-list avoids.
_KNOWN_SIGNATURES = (
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"8BPS", "PSD"), (b"%PDF", "PDF"),
    (b"\x00\x00\x01\x00", "ICO"), (b"\x00\x00\x02\x00", "CUR"), (b"%!PS", "EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"), (b"\x00\x00\x00\x0cjP  ", "JPEG2000"), (b"\xff\x4f\xff\x51", "JPEG2000"),
    (b"qoif", "QOI"), (b"DDS ", "DDS"), (b"icns", "ICNS"), (b"\x76\x2f\x31\x01", "OpenEXR"),
)
_ALLOWED_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"), (b"BM", "BMP"),
)
_FTYP_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF", b"avif": "AVIF", b"avis": "AVIF"}


class ImageRejected(ValueError):
    """An input that is not a usable image. `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray  # uint8, shape (height, width, 3), RGB
    source_format: str  # the decoder that read it: one of ALLOWED_FORMATS
    source_size: tuple[int, int]  # (width, height) as stored, before any reduction
    # The file's own bytes when they already are a JPEG of exactly these pixels (stored at the target size, RGB or
    # greyscale, no EXIF rotation): preprocessing keeps them as the record instead of encoding the pixels again.
    source_jpeg: bytes | None = None


def sniff_format(data: bytes) -> str | None:
    """Names a format we refuse, from its leading bytes, or returns None."""
    for signature, name in _KNOWN_SIGNATURES:
        if data.startswith(signature):
            return name
    if data[4:8] == b"ftyp":
        return _FTYP_BRANDS.get(data[8:12], "ISO media")
    return None


def _not_an_image(data: bytes) -> ImageRejected:
    for signature, name in _ALLOWED_SIGNATURES:
        if data.startswith(signature):
            return ImageRejected(DECODE_ERROR, f"starts like a {name} file but its header is unreadable")
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return ImageRejected(DECODE_ERROR, "starts like a WEBP file but its header is unreadable")
    refused = sniff_format(data)
    if refused:
        return ImageRejected(UNSUPPORTED_FORMAT, f"{refused} is not an allowed format ({', '.join(ALLOWED_FORMATS)})")
    head = data[:256]
    if head.lstrip().lower().startswith((b"<!doctype html", b"<html")):
        return ImageRejected(NOT_AN_IMAGE, "HTML document")
    try:
        head.decode("utf-8")
        kind = "text file"
    except UnicodeDecodeError:
        kind = "unrecognised binary data"
    return ImageRejected(NOT_AN_IMAGE, f"{kind} ({len(data)} bytes, starts {data[:8]!r})")


def _check_pixels(width: int, height: int, max_pixels: int, what: str) -> None:
    if width * height > max_pixels:
        raise ImageRejected(TOO_MANY_PIXELS, f"{what} {width}x{height} exceeds the limit of {max_pixels} pixels")


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # 16/32-bit greyscale: Pillow's convert() clips to 255 (a white picture); scale to 8 bits instead.
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(values.max()), 1.0)
        eight_bit = np.clip(values * (255.0 / top), 0, 255).round().astype(np.uint8)
        return Image.fromarray(eight_bit).convert("RGB")
    if image.mode == "P" and "transparency" in image.info or image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode_image(data: bytes, size: tuple[int, int], max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decodes encoded image bytes to RGB uint8 pixels of shape (height, width, 3), size = (height, width).

    EXIF orientation is applied; animations give their first frame; every colour mode becomes RGB
    (transparency over white). The picture is squashed to `size` without keeping its aspect ratio, the
    way the training photos were. JPEGs are decoded at reduced scale (Pillow `draft`) when the target is
    at most half the stored size, which is most of the cost saved on large photos.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set: truncated files would pass as images")
    if not data:
        raise ImageRejected(EMPTY, "the file has 0 bytes")
    height, width = size
    source_format = "image"
    untouched = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            source_format, source_size = image.format, image.size
            _check_pixels(*image.size, max_pixels, "image")
            for tile in image.tile:  # a frame can claim a larger canvas than the header (GIF, PNG)
                x0, y0, x1, y1 = tile[1]
                _check_pixels(x1 - x0, y1 - y0, max_pixels, "frame")
            if source_format == "JPEG":
                untouched = (image.size == (width, height) and image.mode in ("RGB", "L")
                             and image.getexif().get(_EXIF_ORIENTATION, 1) == 1)
                edge = max(height, width)  # orientation may swap the axes: ask for enough of both
                image.draft("RGB", (edge, edge))
            image.load()
            ImageOps.exif_transpose(image, in_place=True)  # in place: no copy of every image that needs no turn
            image = _to_rgb(image)
            if image.size != (width, height):
                image = image.resize((width, height), RESAMPLE)
            pixels = np.asarray(image, dtype=np.uint8)
    except ImageRejected:
        raise
    except UnidentifiedImageError:
        raise _not_an_image(data) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageRejected(TOO_MANY_PIXELS, str(error)) from None
    except (OSError, SyntaxError, EOFError, ValueError, IndexError, TypeError, struct.error) as error:
        message = str(error) or type(error).__name__
        reason = TRUNCATED if "truncated" in message or isinstance(error, EOFError) else DECODE_ERROR
        raise ImageRejected(reason, f"{source_format}: {message}") from None
    if pixels.shape != (height, width, 3):
        raise ImageRejected(DECODE_ERROR, f"decoded to shape {pixels.shape}, expected {(height, width, 3)}")
    return DecodedImage(pixels=pixels, source_format=source_format, source_size=source_size,
                        source_jpeg=data if untouched else None)


def encode_jpeg(pixels: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """Encodes RGB uint8 pixels as a baseline JPEG."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def content_hash(pixels: np.ndarray) -> str:
    """Identity of the decoded content: equal for byte-different files that decode to the same pixels."""
    digest = hashlib.sha256(repr(pixels.shape).encode())
    digest.update(np.ascontiguousarray(pixels).tobytes())
    return digest.hexdigest()


def perceptual_hash(pixels: np.ndarray) -> int:
    """64-bit difference hash (dHash). Re-encoding, resizing and small colour shifts change at most a few
    bits (see hamming_distance), so near-copies of a photo are a short distance apart."""
    grey = Image.frombuffer("RGB", pixels.shape[1::-1], np.ascontiguousarray(pixels), "raw", "RGB", 0, 1)
    values = np.frombuffer(grey.convert("L").resize((9, 8), Image.Resampling.BOX).tobytes(), np.uint8).reshape(8, 9)
    values = values.astype(np.int16)
    bits = (values[:, 1:] > values[:, :-1]).flatten()
    return int.from_bytes(np.packbits(bits, bitorder="little").tobytes(), "little")  # bit i set when bits[i]


def hamming_distance(hash_a: int, hash_b: int) -> int:
    """Bits that differ between two perceptual hashes: a few for near-copies, about 32 for unrelated photos."""
    return (hash_a ^ hash_b).bit_count()


@dataclasses.dataclass(frozen=True)
class RecordParts:
    """What preprocessing keeps of a decoded image: the record's JPEG bytes and the two hashes (about 7x smaller than
    the pixels, which is what crosses the pipe from the decoder process)."""

    jpeg: bytes
    content_id: str
    perceptual_hash: int
    source_format: str


def pixels_of(decoded: DecodedImage) -> np.ndarray:
    """What scoring keeps of a decoded image: the pixels only (this is all that crosses the decoder's pipe)."""
    return decoded.pixels


def record_parts(decoded: DecodedImage) -> RecordParts:
    """The per-image work of preprocessing after decoding, done where the decoding is done. A JPEG already stored at
    the target size is kept as it is (no second lossy encoding, and the costliest step saved)."""
    pixels = decoded.pixels
    jpeg = decoded.source_jpeg if decoded.source_jpeg is not None else encode_jpeg(pixels)
    return RecordParts(jpeg, content_hash(pixels), perceptual_hash(pixels), decoded.source_format)

