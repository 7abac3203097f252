"""Whether every gs:// path a job was given is reachable with the credentials this process has, within seconds.

With broken credentials a gs:// path used to look like a hung job: Google's auth libraries retry for about half a
minute, then "connect anonymously" and wait again. `check_reachable` asks each bucket for one object name, in a thread,
and fails after REACH_SECONDS with one message naming the three usual causes. All three jobs run it at launch.
Standard library and google-cloud-storage (imported only when a gs:// path is given).
"""

import threading

REACH_SECONDS = 15.0
GCS_PREFIX = "gs://"


class Unreachable(RuntimeError):
    """A gs:// path that cannot be read with the credentials this process has; the message says what to check."""


def advice(bucket: str, what: str) -> str:
    return (f"cannot reach gs://{bucket} ({what}). Check the credentials this process has: Application Default "
            f"Credentials (gcloud auth application-default login, or GOOGLE_APPLICATION_CREDENTIALS naming a key "
            f"file), Workload Identity on GKE (the pod's Kubernetes service account must be bound to a Google service "
            f"account with access to the bucket), or STORAGE_EMULATOR_HOST when testing against an emulator")


def check_reachable(paths, seconds: float | None = None) -> None:
    """Raises Unreachable unless every bucket the gs:// paths name answers a one-object listing within `seconds`
    (default REACH_SECONDS)."""
    seconds = REACH_SECONDS if seconds is None else seconds
    buckets = {}
    for path in paths:
        if path and str(path).startswith(GCS_PREFIX):
            bucket, _, name = str(path)[len(GCS_PREFIX):].partition("/")
            buckets.setdefault(bucket, name.split("*")[0])
    for bucket, prefix in sorted(buckets.items()):
        outcome = {}

        def probe(bucket=bucket, prefix=prefix, outcome=outcome):
            try:
                from google.cloud import storage
                from google.cloud.storage.retry import DEFAULT_RETRY

                # Transient errors (429, 503, a dropped connection) are retried within the same deadline: only a
                # bucket that stays out of reach fails the launch, not one busy moment of GCS.
                list(storage.Client().list_blobs(bucket, prefix=prefix, max_results=1,
                                                 retry=DEFAULT_RETRY.with_timeout(seconds)))
                outcome["ok"] = True
            except Exception as error:  # noqa: BLE001 - any failure here is reported as unreachable
                outcome["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"

        thread = threading.Thread(target=probe, name=f"reach-{bucket}", daemon=True)
        thread.start()
        thread.join(seconds)
        if thread.is_alive():
            raise Unreachable(advice(bucket, f"no answer within {seconds:g} s"))
        if "error" in outcome:
            raise Unreachable(advice(bucket, outcome["error"]))
