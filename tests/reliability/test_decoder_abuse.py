"""Case 1: decompression bombs are refused before any large allocation; only allow-listed decoders see bytes."""

import io
import json
import textwrap

import numpy as np
import pytest
from PIL import Image, features

from beam_pipelines import imaging
from tests import corpus
from tests.trainer.datasets import run_python

MEMORY_BOUND_MB = 100

# Decodes each bomb in a fresh interpreter whose address space may grow by at most MEMORY_BOUND_MB once the libraries
# are loaded (RLIMIT_AS): a large allocation then fails with MemoryError even where the kernel would hand out untouched
# pages lazily and RSS would not show it. The 8000x8000 PNG (64 MP, a 192 MB buffer) is above our 50 MP limit but
# below Pillow's own bomb warning (89 MP): only imaging.decode_image's pixel checks stand between it and the buffer.
BOMBS = textwrap.dedent(f"""
    import json, re, resource
    from beam_pipelines import imaging
    from tests import corpus
    bombs = {{"png_30000x30000": corpus.png_bomb(), "png_8000x8000": corpus.png_bomb(8000, 8000),
             "gif_frame_30000x30000": corpus.gif_with_huge_frame()}}
    imaging.decode_image(corpus.encode(corpus.easy_pixels(0, 1, 64)), (32, 32))  # libraries loaded, buffers warm
    status = open("/proc/self/status").read()
    address_space = int(re.search(r"VmSize:\\s+(\\d+) kB", status).group(1)) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (address_space + {MEMORY_BOUND_MB} * 2**20, resource.RLIM_INFINITY))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    reasons = {{}}
    for name, data in bombs.items():
        try:
            imaging.decode_image(data, (180, 180))
            reasons[name] = "decoded"
        except imaging.ImageRejected as rejected:
            reasons[name] = rejected.reason
        except MemoryError:
            reasons[name] = "MemoryError"
    growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(json.dumps({{"reasons": reasons, "rss_growth_mb": growth_mb}}))
""")

# Valid files that Pillow writes and would happily open without the allow-list. TGA, PCX, PPM, SGI and the others
# with no signature imaging.py sniffs prove that `formats=ALLOWED_FORMATS` reaches Image.open: without it they decode.
REFUSED = ["TIFF", "ICO", "PDF", "TGA", "PCX", "PPM", "SGI", "IM", "DDS", "QOI", "SPIDER", "XBM", "MSP"]
if features.check_codec("jpg_2000"):
    REFUSED.append("JPEG2000")
# PSD, EPS and HEIC cannot be written by Pillow; their signatures are refused by name (tests/beam_pipelines/
# test_imaging.py covers the sniffing of TIFF, ICO and PDF under .jpg names in the odd-file corpus).
SIGNATURES_ONLY = {"PSD": b"8BPS\x00\x01" + bytes(40), "EPS": b"%!PS-Adobe-3.0 EPSF-3.0\n",
                   "HEIC": b"\x00\x00\x00\x18ftypheic" + bytes(16)}


def _saved(fmt: str) -> bytes:
    image = Image.fromarray(corpus.easy_pixels(1, 5, 48))
    if fmt in ("XBM", "MSP"):
        image = image.convert("1")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_bombs_and_formats_outside_the_allow_list_are_refused_before_decoding():
    result = run_python(BOMBS, timeout=120)
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    print("bomb decoding:", outcome)
    assert outcome["reasons"] == dict.fromkeys(("png_30000x30000", "png_8000x8000", "gif_frame_30000x30000"),
                                               imaging.TOO_MANY_PIXELS)
    assert outcome["rss_growth_mb"] < MEMORY_BOUND_MB

    assert imaging.ALLOWED_FORMATS == ("JPEG", "PNG", "GIF", "BMP", "WEBP")
    for fmt in REFUSED:
        data = _saved(fmt)
        if fmt in Image.OPEN:  # Pillow reads it (PDF is write-only): a genuine, readable file of that format
            assert Image.open(io.BytesIO(data)).format == fmt
        with pytest.raises(imaging.ImageRejected) as rejected:
            imaging.decode_image(data, (32, 32))
        assert rejected.value.reason in (imaging.UNSUPPORTED_FORMAT, imaging.NOT_AN_IMAGE), (fmt, rejected.value)
    for fmt, data in SIGNATURES_ONLY.items():
        with pytest.raises(imaging.ImageRejected, match=f"{fmt} is not an allowed format"):
            imaging.decode_image(data, (32, 32))

    pixels = corpus.easy_pixels(0, 9, 48)
    for fmt in imaging.ALLOWED_FORMATS:  # the allow-list is not a deny-all: every photo format still decodes
        decoded = imaging.decode_image(corpus.encode(pixels, fmt), (48, 48))
        assert decoded.source_format == fmt
        assert np.abs(decoded.pixels.astype(int) - pixels.astype(int)).mean() < 12
