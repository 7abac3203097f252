"""Shared fixtures: a real GCS emulator on 127.0.0.1, the real photo folders, free ports."""

import os
import socket
import uuid
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def gcs_emulator_host():
    """A gcp-storage-emulator serving the GCS JSON API on 127.0.0.1 for the whole session.

    Beam's GCS I/O and google-cloud-storage both honour STORAGE_EMULATOR_HOST. It ignores generation
    preconditions: tests of those use fake-gcs-server (see tests/gcs_servers.py users).
    """
    from gcp_storage_emulator.server import create_server

    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def gcs_bucket(gcs_emulator_host, monkeypatch):
    """A fresh bucket on the emulator; returns its gs:// URI (no trailing slash)."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator_host)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "catsdogs-test")
    fresh_storage_clients(monkeypatch)
    from google.cloud import storage

    name = f"test-{uuid.uuid4().hex[:12]}"
    storage.Client().create_bucket(name)
    return f"gs://{name}"


def fresh_storage_clients(monkeypatch) -> None:
    """trainer.storage keeps one GCS client per thread, made for the STORAGE_EMULATOR_HOST of its time: a test
    that points GCS elsewhere (another emulator, a proxy) must start from new clients, or an earlier test's client
    would send its requests to that test's server."""
    import threading

    from trainer import storage

    monkeypatch.setattr(storage, "_local", threading.local())


def point_gcs_at(monkeypatch, url: str) -> None:
    """Sends this process's GCS calls to url from now on (an emulator, or a proxy in front of one)."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
    fresh_storage_clients(monkeypatch)


def upload_tree(local_root: Path, gcs_prefix: str) -> list[str]:
    """Uploads every file below local_root to gcs_prefix/<relative path>; returns the URIs."""
    from google.cloud import storage

    bucket_name, _, prefix = gcs_prefix[len("gs://"):].partition("/")
    bucket = storage.Client().bucket(bucket_name)
    uris = []
    for path in sorted(p for p in local_root.rglob("*") if p.is_file()):
        name = f"{prefix}/{path.relative_to(local_root).as_posix()}".lstrip("/")
        bucket.blob(name).upload_from_filename(str(path))
        uris.append(f"gs://{bucket_name}/{name}")
    return uris


@pytest.fixture
def shared_data() -> Path:
    """../shared/data with the real photos; the test is skipped cleanly where it is absent."""
    if not (SHARED_DATA / "pets-180").is_dir():
        pytest.skip(f"real photos not available at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _quiet_tensorflow(monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
