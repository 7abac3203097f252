"""The model export contract: an export root's layout, `model_info.json` and the `latest` pointer, in one place.

Standard library only, like trainer/features.py for the TFRecord schema: the writers (trainer/export.py,
trainer/publish.py) and the reader (beam_pipelines/model_handler.py) all import it. It names, builds, parses and
validates; it does no I/O, so each caller reads bytes with its own storage stack and hands them here.

    <export root>/<version>/saved_model.pb, variables/...  a SavedModel with the two signatures in SIGNATURES
    <export root>/<version>/model_info.json                written last: a version without it is incomplete
    <export root>/latest                                   {"format": 2, "version": ..., "model_info_sha256": ...}

A version is a decimal integer (seconds since the epoch when the clock allows, see `next_version`), as TF Serving
expects of its version directories. Published versions are immutable. `model_info.json` lists the sha256 of every
other file of its version (`files`), and `latest` records the sha256 of the `model_info.json` it points at: a
reader that trusts the pointer can detect any change to the version, `model_info.json` included.

Pointers written before the sha256 was recorded (format 1: the version number as plain text) are parsed, with
`model_info_sha256` None, so tools can still read and migrate an old export root; the scorer refuses them (it cannot
check what the pointer does not record) and names the command that rewrites one: `make rollback VERSION=<v>`.
"""

import dataclasses
import hashlib
import json
import re
from collections.abc import Callable, Iterable

from trainer.storage import join  # noqa: F401 - also model_contract.join for the export root's paths

MODEL_INFO = "model_info.json"
LATEST = "latest"
SAVED_MODEL = "saved_model.pb"
FORMAT_VERSION = 1  # of model_info.json; fields added since are optional, so readers of version 1 still read it
LATEST_FORMAT = 2  # 1: the version as plain text; 2: JSON with the sha256 of the version's model_info.json
SIGNATURES = {"bytes": "serving_default", "pixels": "serve_pixels"}
THRESHOLD = 0.5  # class_names[1] when its probability is at least this
# The bytes signature refuses larger images before decoding them, like imaging.DEFAULT_MAX_PIXELS on the Pillow
# path: a 50 MP photo decodes to 150 MB of RGB; larger is a bomb, not a pet.
MAX_IMAGE_PIXELS = 50_000_000
REQUIRED_FIELDS = ("format_version", "model_version", "model_name", "class_names", "input_size", "signatures",
                   "files")
MAX_POINTER_BYTES = 4096

_VERSION = re.compile(r"[0-9]{1,20}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_FIX = ("re-export the model with trainer/export.py, or copy the whole version directory again if it was copied "
        "by hand")


class ModelError(ValueError):
    """A model directory, model_info.json or `latest` pointer that breaks the contract; the message names what is
    wrong and what to do."""


@dataclasses.dataclass(frozen=True)
class Pointer:
    """What `latest` says: a version, and the sha256 of that version's model_info.json (None in format 1)."""

    version: str
    model_info_sha256: str | None

    @property
    def legacy(self) -> bool:
        return self.model_info_sha256 is None


def is_version(name) -> bool:
    return isinstance(name, str) and _VERSION.fullmatch(name) is not None


def version_key(version: str) -> int:
    return int(version)


def next_version(now: float, existing: Iterable[str]) -> str:
    """A version greater than every existing one and than `now` (seconds since the epoch): a clock that is behind
    (or was once ahead) never makes a version that sorts before, or collides with, one already published."""
    newest = max((version_key(v) for v in existing if is_version(v)), default=-1)
    return str(max(int(now), newest + 1))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- the `latest` pointer ----------------------------------------------------------------------------------------

def format_pointer(pointer: Pointer) -> bytes:
    if not is_version(pointer.version) or not _SHA256.fullmatch(pointer.model_info_sha256 or ""):
        raise ModelError(f"refusing to write a `latest` pointer without a version and a sha256: {pointer}")
    content = {"format": LATEST_FORMAT, "version": pointer.version, "model_info_sha256": pointer.model_info_sha256}
    return (json.dumps(content, sort_keys=True) + "\n").encode()


def parse_pointer(data: bytes, where: str) -> Pointer:
    """The pointer stored in `where` (for messages); raises ModelError when it is not one."""
    fix = (f"point it at a published version again with `python -m trainer.rollback to --export_dir "
           f"{where.rsplit('/', 1)[0]} --version <version>` (or pass --model <export root>/<version>)")
    if len(data) > MAX_POINTER_BYTES:
        raise ModelError(f"{where} is {len(data)} bytes long: not a `latest` pointer; {fix}")
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ModelError(f"{where} is not UTF-8 text: not a `latest` pointer; {fix}") from None
    if not text.startswith("{"):  # format 1: the version alone
        if not is_version(text):
            raise ModelError(f"{where} names {text[:100]!r}, not a version (an integer directory name next to it); "
                             f"refusing to follow it; {fix}")
        return Pointer(text, None)
    try:
        content = json.loads(text)
    except json.JSONDecodeError as error:
        raise ModelError(f"{where} is not valid JSON ({error}); {fix}") from None
    if content.get("format") != LATEST_FORMAT:
        raise ModelError(f"{where} has format {content.get('format')!r}; this code reads format {LATEST_FORMAT}: "
                         f"use the catsdogs version that wrote it, or {fix}")
    version, checksum = content.get("version"), content.get("model_info_sha256")
    if not is_version(version):
        raise ModelError(f"{where}: `version` is {str(version)[:100]!r}, not a version (an integer directory name "
                         f"next to it); refusing to follow it; {fix}")
    if not (isinstance(checksum, str) and _SHA256.fullmatch(checksum)):
        raise ModelError(f"{where}: `model_info_sha256` must be 64 lowercase hex digits, got "
                         f"{str(checksum)[:100]!r}; {fix}")
    return Pointer(version, checksum)


# ---- model_info.json ---------------------------------------------------------------------------------------------

def file_key_problem(key) -> str | None:
    """Why `key` cannot name a file inside a version directory, or None when it can. Checked before anything is
    copied: keys become local paths when a gs:// model is fetched."""
    if not isinstance(key, str) or not key:
        return "is empty"
    if "\\" in key:
        return "contains a backslash"
    if key.startswith("/") or re.match(r"[A-Za-z]:", key):
        return "is an absolute path"
    if any(ord(char) < 32 for char in key):
        return "contains a control character"
    parts = key.split("/")
    if "" in parts:
        return "has an empty part (a doubled or trailing '/')"
    if ".." in parts or "." in parts:
        return "has a '.' or '..' part"
    if key == MODEL_INFO:
        return f"names {MODEL_INFO} itself, which is never listed"
    return None


def check_files(files, where: str, fix: str = _FIX) -> dict:
    """model_info.json's `files`: {relative path: sha256}, saved_model.pb included, every key a plain relative
    path. Raises ModelError naming the first bad entry."""
    if not isinstance(files, dict) or SAVED_MODEL not in files:
        raise ModelError(f"{where}: `files` must map every exported file ({SAVED_MODEL} included) to its sha256; "
                         f"{fix}")
    for key, checksum in files.items():
        problem = file_key_problem(key)
        if problem:
            raise ModelError(f"{where}: `files` key {str(key)[:200]!r} {problem}; every key must be a relative path "
                             f"inside the version directory such as 'variables/variables.index'. trainer/export.py "
                             f"never writes such a key: do not use this model, re-export it")
        if not (isinstance(checksum, str) and _SHA256.fullmatch(checksum)):
            raise ModelError(f"{where}: `files` entry {key!r} must be a sha256 (64 lowercase hex digits), got "
                             f"{str(checksum)[:100]!r}; {fix}")
    return files


def validate_model_info(info, where: str, fix: str = _FIX) -> dict:
    """A parsed model_info.json with every required field checked; raises ModelError naming the wrong field."""
    if not isinstance(info, dict):
        raise ModelError(f"{where} must hold a JSON object; {fix}")
    missing = [field for field in REQUIRED_FIELDS if field not in info]
    if missing:
        raise ModelError(f"{where} lacks required field(s) {', '.join(missing)}; {fix}")
    if not isinstance(info["format_version"], int) or info["format_version"] > FORMAT_VERSION:
        raise ModelError(f"{where}: format_version {info['format_version']!r} is not one this code reads "
                         f"(<= {FORMAT_VERSION}); use the catsdogs version that exported it, or {fix}")
    version = info["model_version"]
    if not is_version(str(version) if isinstance(version, int) and not isinstance(version, bool) else version):
        raise ModelError(f"{where}: model_version must be a non-empty string of digits (the version directory's "
                         f"name), got {version!r}; {fix}")
    if not (isinstance(info["model_name"], str) and info["model_name"]):
        raise ModelError(f"{where}: model_name must be a non-empty string, got {info['model_name']!r}; {fix}")
    names = info["class_names"]
    if not (isinstance(names, list) and len(names) == 2 and all(isinstance(n, str) and n for n in names)
            and names[0] != names[1]):
        raise ModelError(f"{where}: class_names must be two distinct names (negative, positive), got {names!r}; "
                         f"this code handles two-class models only; {fix}")
    size = info["input_size"]
    if not (isinstance(size, list) and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        raise ModelError(f"{where}: input_size must be [height, width] of positive integers, got {size!r}; {fix}")
    signatures = info["signatures"]
    if not isinstance(signatures, dict) or signatures.get("pixels") != SIGNATURES["pixels"]:
        raise ModelError(f"{where}: signatures must name the pixels signature {SIGNATURES['pixels']!r}, got "
                         f"{signatures!r}; {fix}")
    check_files(info["files"], where, fix)
    promotion = info.get("promotion")
    if promotion is not None and not (isinstance(promotion, dict) and isinstance(promotion.get("blessed"), bool)):
        raise ModelError(f"{where}: promotion must be an object with a boolean `blessed`, got {promotion!r}; {fix}")
    return info


def parse_model_info(data: bytes, where: str, fix: str = _FIX) -> dict:
    """model_info.json's bytes -> its validated content."""
    try:
        info = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(f"{where} is not valid JSON ({error}); {fix}") from None
    return validate_model_info(info, where, fix)


def format_model_info(info: dict) -> bytes:
    """The bytes export writes (validated first, so a writer cannot produce what readers refuse)."""
    validate_model_info(info, MODEL_INFO)
    return (json.dumps(info, indent=2, sort_keys=True) + "\n").encode()


def build_model_info(*, version: str, model_name: str, class_names, input_size, files: dict, metrics: dict,
                     training_data: dict, code_version: str, created_at: str, promotion: dict | None = None,
                     tta: str = "none") -> dict:
    info = {
        "format_version": FORMAT_VERSION,
        "model_version": version,
        "model_name": model_name,
        "class_names": list(class_names),
        "input_size": list(input_size),
        "signatures": dict(SIGNATURES),
        "threshold": THRESHOLD,
        "tta": tta,  # test-time augmentation inside the signatures: "none", or "flip" (photo and mirror image)
        "max_image_pixels": MAX_IMAGE_PIXELS,
        "metrics": metrics,
        "training_data": training_data,
        "code_version": code_version,
        "created_at": created_at,
        "files": dict(sorted(files.items())),
    }
    if promotion is not None:
        info["promotion"] = promotion
    return info


def is_blessed(info: dict) -> bool:
    """Whether the promotion gate passed this export. Exports made before the gate existed carry no record; they
    were published as `latest` unconditionally, so they count as blessed."""
    return bool(info.get("promotion", {"blessed": True})["blessed"])


def verify_files(model_dir: str, info: dict, sha256_of: Callable[[str], str | None], fix: str = _FIX) -> None:
    """Every file listed in `files` exists under model_dir with its recorded sha256. sha256_of(path) reads the
    file (local path or URI) and returns its sha256, or None when it does not exist. Raises ModelError."""
    for relative, expected in sorted(check_files(info["files"], join(model_dir, MODEL_INFO), fix).items()):
        path = join(model_dir, relative)
        actual = sha256_of(path)
        if actual is None:
            raise ModelError(f"{path} is listed in {MODEL_INFO} but missing: the export is incomplete; {fix}")
        if actual != expected:
            raise ModelError(f"{path} has sha256 {actual} but {MODEL_INFO} records {expected}: the file was changed "
                             f"or only partly copied; {fix}")
