"""lifecycle.py: the run lease (refusal, takeover of a dead holder, renewal, loss), publishing a staging location, and
the clean-up of staging that dead runs left; locally and on GCS (fake-gcs-server, which enforces preconditions)."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from beam_pipelines import file_listing, lifecycle
from tests.conftest import point_gcs_at
from tests.gcs_servers import FaultyProxy, fake_gcs_bucket_fixture, fake_gcs_server_fixture  # noqa: F401
from trainer import storage


def _holder(path, **fields) -> dict:
    """Writes a lease record as another run would have; returns it."""
    record = {"owner": "someone-else", "host": "other-host", "pid": 4242, "acquired_at": "2026-12-01T00:00:00Z",
              "renewed_at": time.time(), "ttl": 60.0, **fields}
    storage.write_json(str(path), record)
    return record


def _wait_for(condition, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_a_live_holder_is_refused_with_exit_code_75_and_a_message_naming_it(tmp_path):
    path = str(tmp_path / ".lease-r1.json")
    with lifecycle.Lease(path, what="run id r1"):
        before = storage.read_bytes(path)
        with pytest.raises(lifecycle.LeaseHeld) as refused:
            lifecycle.Lease(path, what="run id r1").acquire()
        assert storage.read_bytes(path) == before  # the holder's lease is untouched
    assert refused.value.code == lifecycle.EXIT_LEASE_HELD == 75
    message = str(refused.value)
    assert "another run holds run id r1" in message
    assert f"host {socket.gethostname()}, pid {os.getpid()}" in message

    _holder(path)  # alive on another host: renewed just now
    with pytest.raises(lifecycle.LeaseHeld, match="host other-host, pid 4242"):
        lifecycle.Lease(path).acquire()


def test_a_lease_not_renewed_for_its_ttl_is_taken_over_and_the_takeover_logged(tmp_path, caplog):
    path = str(tmp_path / ".lease-r1.json")
    dead = _holder(path, renewed_at=time.time() - 100, ttl=60.0)
    with caplog.at_level("WARNING", logger="beam_pipelines.lifecycle"), lifecycle.Lease(path, what="run r1") as lease:
        assert lease.took_over == dead
        assert json.loads(storage.read_bytes(path))["owner"] == lease.owner
    [line] = [message for message in caplog.messages if "took over" in message]
    assert "other-host" in line and "pid 4242" in line and "not renewed for 100 s" in line


def test_a_lease_whose_process_on_this_host_is_gone_is_taken_over_at_once(tmp_path, caplog):
    path = str(tmp_path / ".lease-r1.json")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _holder(path, host=socket.gethostname(), pid=gone.pid)  # renewed just now, but its process is gone
    with caplog.at_level("WARNING", logger="beam_pipelines.lifecycle"), lifecycle.Lease(path) as lease:
        assert lease.took_over["pid"] == gone.pid
    assert any(f"its process {gone.pid} on this host is gone" in message for message in caplog.messages)
    assert not os.path.exists(path)  # released


def test_the_holder_renews_its_lease_and_learns_when_another_run_took_it(tmp_path):
    path = str(tmp_path / ".lease-r1.json")
    with lifecycle.Lease(path, ttl=0.4) as lease:
        first = json.loads(storage.read_bytes(path))["renewed_at"]
        assert _wait_for(lambda: json.loads(storage.read_bytes(path))["renewed_at"] > first), "never renewed"
        assert not lease.lost.is_set()
        other = _holder(path)  # another run decided this one was dead and took the lease
        assert _wait_for(lease.lost.is_set), "the holder did not notice"
    assert json.loads(storage.read_bytes(path)) == other  # and leaving, it did not delete the other run's lease


def test_release_frees_the_lease_for_the_next_run(tmp_path):
    path = str(tmp_path / ".lease-r1.json")
    with lifecycle.Lease(path):
        pass
    assert not os.path.exists(path)
    with lifecycle.Lease(path) as again:
        assert again.took_over is None


def test_a_gcs_lease_is_exclusive_and_a_lost_reply_to_its_own_writes_does_not_cost_it(fake_gcs_bucket,
                                                                                     fake_gcs_server, monkeypatch):
    """GCS committed the create (or a renewal) but the reply was lost: the client's retry meets its own write (412).
    The run must recognise its own lease, not refuse itself or believe another run took it."""
    path = f"{fake_gcs_bucket}/scores/.lease-r1.json"
    point_gcs_at(monkeypatch, fake_gcs_server)
    with lifecycle.Lease(path, what="run id r1"), pytest.raises(lifecycle.LeaseHeld):
        lifecycle.Lease(path, what="run id r1").acquire()
    assert not storage.exists(path)

    def lose_create_reply(request):
        return "lose_reply" if request.kind == "upload" and request.number == 0 else None

    with FaultyProxy(fake_gcs_server, lose_create_reply) as proxy:
        point_gcs_at(monkeypatch, proxy.url)
        with lifecycle.Lease(path) as lease:  # the default ttl: its own record looks alive
            assert lease.took_over is None
        point_gcs_at(monkeypatch, fake_gcs_server)
    assert [status for _, _, status, _ in proxy.requests("upload")][:2] == [503, 412]  # created, then met itself
    assert not storage.exists(path)

    def lose_renewal_reply(request):
        return "lose_reply" if request.kind == "upload" and request.number == 1 else None

    with FaultyProxy(fake_gcs_server, lose_renewal_reply) as proxy:
        point_gcs_at(monkeypatch, proxy.url)
        with lifecycle.Lease(path, ttl=1.0) as lease:
            assert _wait_for(lambda: len(proxy.requests("upload")) >= 5, seconds=20), "not renewed"
            assert not lease.lost.is_set()  # its own renewal landed: nobody took the lease
        point_gcs_at(monkeypatch, fake_gcs_server)
    assert [status for _, _, status, _ in proxy.requests("upload")][1:3] == [503, 412]
    assert not storage.exists(path)


# ---- publishing and cleaning up -----------------------------------------------------------------------------------

def _tree(root) -> dict:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_publish_directory_replaces_the_previous_set_and_leaves_out_private_files(tmp_path):
    final, staging = tmp_path / "r1", tmp_path / ".staging-r1"
    (final / "old").mkdir(parents=True)
    (final / "old" / "predictions-a.jsonl").write_bytes(b"old")
    (staging / "_committed").mkdir(parents=True)
    (staging / "_committed" / "a.json").write_bytes(b"{}")
    (staging / "_counts.json").write_bytes(b"{}")
    (staging / "predictions-b.jsonl").write_bytes(b"new")

    lifecycle.publish_directory(str(staging), str(final), marker="summary.json",
                                exclude=("_committed", "_counts.json"))

    assert _tree(final) == {"predictions-b.jsonl": b"new"}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["r1"]


def test_publish_directory_on_gcs_copies_the_set_and_removes_the_old_one_marker_first(gcs_bucket, gcs_emulator_host,
                                                                                    monkeypatch):
    final, staging = f"{gcs_bucket}/scores/r1", f"{gcs_bucket}/scores/.staging-r1"
    for name in ("summary.json", "predictions-old.jsonl"):
        storage.write_bytes(f"{final}/{name}", b"old")
    for name in ("predictions-a.jsonl", "errors-a.jsonl", "_committed/a.json"):
        storage.write_bytes(f"{staging}/{name}", name.encode())

    lifecycle.publish_directory(staging, final, marker="summary.json", exclude=("_committed",))

    names = sorted(ref.path[len(gcs_bucket) + 1:] for ref in file_listing.list_files(f"{gcs_bucket}/"))
    assert names == ["scores/r1/errors-a.jsonl", "scores/r1/predictions-a.jsonl"]  # the caller writes the marker


def test_clean_stale_staging_removes_only_old_attempts_of_dead_runs(tmp_path, monkeypatch, caplog):
    for name in ("old", "young", "mine"):
        lifecycle.write_attempt(str(tmp_path / f".staging-{name}"))
    (tmp_path / ".staging-old" / "predictions-a.jsonl").write_bytes(b"x")
    (tmp_path / ".staging-stray").mkdir()  # no attempt record: not ours to judge
    attempt = tmp_path / ".staging-old" / lifecycle.ATTEMPT_FILE
    record = json.loads(attempt.read_text())
    attempt.write_text(json.dumps({**record, "started_at_epoch": time.time() - 100 * 3600}))
    (tmp_path / ".staging-mine" / lifecycle.ATTEMPT_FILE).write_text(attempt.read_text())  # old, but this run's

    with caplog.at_level("INFO", logger="beam_pipelines.lifecycle"):
        removed = lifecycle.clean_stale_staging(str(tmp_path), ".staging-", keep=str(tmp_path / ".staging-mine"))

    assert removed == [str(tmp_path / ".staging-old")]
    assert sorted(path.name for path in tmp_path.iterdir()) == [".staging-mine", ".staging-stray", ".staging-young"]
    assert any(".staging-young" in message and "did not finish" in message for message in caplog.messages)
