"""Checks that each reliability test can fail: removes one protection at a time and expects its test to fail.

    .venv/bin/python -m tests.reliability.mutations            # all of them, ~15 minutes on 2 cores
    .venv/bin/python -m tests.reliability.mutations 3 7        # by number

Not part of `make test` (it edits source files, one at a time, and restores each from memory afterwards; the work
tree must be clean where it edits). docs/RELIABILITY.md's "mutation" column is this table, and was produced by it.
"""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
R = "tests/reliability/"

# (source file, text to replace, replacement, test that must fail, what the mutation removes)
MUTATIONS = [
    ("beam_pipelines/imaging.py", "    if width * height > max_pixels:", "    if False:",
     R + "test_decoder_abuse.py", "the pixel-limit check before decoding"),
    ("beam_pipelines/imaging.py", 'ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP")',
     'ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")', R + "test_decoder_abuse.py",
     "TIFF added to the decoder allow-list"),
    ("beam_pipelines/isolation.py", "self._in_process = load_function(decode_fn) if not timeout else None",
     "self._in_process = load_function(decode_fn)", R + "test_decoder_isolation.py",
     "the decoder child process (decode in the worker)"),
    ("beam_pipelines/preprocess.py", "too_many_rejected = check_rejections(metadata, config.max_rejected_fraction)",
     "too_many_rejected = None", R + "test_rejection_threshold.py", "the rejection-rate check"),
    ("beam_pipelines/preprocess.py", "_READ_ATTEMPTS = 3", "_READ_ATTEMPTS = 1", R + "test_transient_io.py",
     "read retries"),
    ("beam_pipelines/preprocess.py", "    staging = _staging_dir(config.output_dir)\n",
     "    staging = config.output_dir\n", R + "test_killed_job.py", "the staging directory (write in place)"),
    ("trainer/data.py", "    dataset = dataset.map(parse, num_parallel_calls=autotune, deterministic=not training)\n",
     "    dataset = dataset.map(parse, num_parallel_calls=autotune, deterministic=not training).ignore_errors()\n",
     R + "test_corrupt_shard.py", "failing on damaged records (ignore_errors)"),
    ("trainer/backup.py", "        backup = choose_backup(self.backup_dir)\n", "        backup = None\n",
     "tests/trainer/test_train.py::test_sigkill_mid_epoch_then_same_command_resumes_from_backup",
     "restoring the backup on start"),
    ("trainer/backup.py", "    if expected is not None and sha256(weights) != expected:", "    if False:",
     R + "test_corrupt_backup.py", "the backup checksum"),
    ("beam_pipelines/model_handler.py",
     "    info = read_model_info(model_dir, expected_sha256)\n    verify_files(model_dir, info)\n",
     "    info = read_model_info(model_dir, expected_sha256)\n", R + "test_untrusted_models.py::"
     "test_a_valid_model_with_swapped_weights_is_refused_by_its_checksums", "the checksum check at launch"),
    ("beam_pipelines/model_handler.py",
     "        # Never handed to keras.models.load_model: a Keras file's Lambda layers carry Python bytecode.\n",
     "        __import__('keras').models.load_model(model, safe_mode=False)\n",
     R + "test_untrusted_models.py::test_a_keras_file_with_a_lambda_layer_never_runs",
     "refusing Keras files (load them unsafely)"),
    ("beam_pipelines/model_handler.py",
     "        prefix = os.path.realpath(prefix)\n"
     "        path = path if storage.is_gcs(path) else os.path.realpath(path)",
     "        prefix = os.path.abspath(prefix)\n"
     "        path = path if storage.is_gcs(path) else os.path.abspath(path)",
     R + "test_untrusted_models.py::test_a_model_outside_the_allowed_prefix_is_refused_even_through_a_symlink",
     "resolving symlinks before the prefix check"),
    ("trainer/model_contract.py", "        if not is_version(text):", "        if False:",
     R + "test_untrusted_models.py::test_a_latest_pointer_naming_a_path_instead_of_a_version_is_refused",
     "the version check on `latest`"),
    ("trainer/publish.py",
     "            if _same_content(blob, path):  # our own earlier attempt", "            if False:  #",
     R + "test_gcs_ambiguous_write.py", "recognising our own completed write after a 412"),
    ("trainer/export.py",
     "        data = image_headers.check_pixel_limit(data, model_contract.MAX_IMAGE_PIXELS)"
     "  # a bomb is never decoded\n",
     "", R + "test_bytes_signature_bombs.py", "the bytes signature's pixel limit before decoding"),
    ("trainer/model_contract.py", "        problem = file_key_problem(key)\n", "        problem = None\n",
     R + "test_untrusted_models.py::test_crafted_files_keys_of_a_gcs_model_are_refused_before_anything_is_copied",
     "validating model_info.json's `files` keys before a gs:// model is copied"),
    ("beam_pipelines/model_handler.py", "    if expected_sha256 is not None:\n        actual =",
     "    if False:\n        actual =",
     R + "test_untrusted_models.py::test_a_model_info_rewritten_with_its_files_is_caught_by_the_pointers_sha256",
     "comparing model_info.json with the sha256 `latest` records"),
    ("trainer/promotion.py", '"passed": value is not None and value >= limit})', '"passed": True})',
     R + "test_model_promotion.py::test_a_worse_model_is_not_published_and_the_trainer_exits_4",
     "the comparison with the current `latest` in the promotion gate"),
    ("trainer/promotion.py", "move_latest=movable and (blessed or gate.force_publish),", "move_latest=False,",
     R + "test_model_promotion.py::test_a_better_model_is_published", "moving `latest` to a blessed model"),
    ("trainer/promotion.py", "    if pointer is None:\n        return None, None\n",
     '    if pointer is None:\n        return None, {"version": None, "comparable": False, "problem": "none"}\n',
     R + "test_model_promotion.py::test_the_first_model_needs_no_baseline",
     "publishing a first model without a baseline"),
    ("trainer/model_contract.py", "    return str(max(int(now), newest + 1))", "    return str(int(now))",
     R + "test_model_promotion.py::test_a_version_made_with_a_clock_an_hour_behind_still_becomes_latest",
     "versions newer than every published one whatever the clock"),
    ("trainer/publish.py", "    _verify(model_contract.join(export_root, version), info, version)\n", "",
     "tests/trainer/test_rollback.py::test_rollback_refuses_a_broken_version",
     "verifying a version's checksums before `latest` is rolled back to it"),
    ("setup.py", '"pillow": "pillow==13.0.0",', '"pillow": "pillow==12.3.0",', R + "test_dependency_pins.py",
     "the Pillow pin moved without reinstalling (or updating RELIABILITY.md)"),
    ("k8s/overlays/multinode/networkpolicy.yaml",
     "  ingress:\n    - from:\n        - podSelector:\n            matchLabels:\n"
     "              batch.kubernetes.io/job-name: train-workers\n",
     "  ingress:\n    - from:\n        - podSelector:\n            matchLabels:\n"
     "              app.kubernetes.io/name: catsdogs\n",
     "tests/k8s/test_network_policy.py", "training workers' gRPC port open to every catsdogs pod"),
    ("k8s/base/networkpolicy.yaml", "  name: default-deny\nspec:\n  podSelector: {}\n  policyTypes:\n    - Ingress\n",
     "  name: default-deny\nspec:\n  podSelector: {}\n  policyTypes:\n", "tests/k8s/test_network_policy.py",
     "the namespace's default deny of ingress"),
    ("k8s/base/networkpolicy.yaml",
     "              - fe80::/10\n      ports:\n        - protocol: TCP\n          port: 443\n",
     "              - fe80::/10\n", "tests/k8s/test_network_policy.py",
     "the port limit on egress to outside addresses (443 only)"),
    ("k8s/base/train-job.yaml", "          operator: In\n          values: [2, 3, 4]\n",
     "          operator: In\n          values: [2, 3]\n", "tests/k8s/test_job_failures.py",
     "ending the training Job when the model is not blessed (exit 4 retried instead)"),
    ("k8s/components/dataflow-scoring/score-launcher.yaml", "                - --allowed_model_prefix=$(MODEL)\n", "",
     "tests/k8s/test_dataflow.py", "the base CronJob's --allowed_model_prefix on the Dataflow launcher"),
    ("trainer/backup.py", "            load_weights_file(self.model, backup.weights)\n", "            pass\n",
     "tests/trainer/test_train.py::test_sigkill_mid_epoch_then_same_command_resumes_from_backup",
     "restoring the backup's weights (the epoch still resumes)"),
    ("trainer/distribute.py", "        if not placement.multi_worker:\n            raise\n", "        raise\n",
     R + "test_lost_worker.py::test_losing_a_worker_makes_the_other_exit_5_within_the_bound",
     "exit status 5 for a lost worker"),
    ("trainer/distribute.py", "            if idle < self.timeout_seconds:\n                continue\n",
     "            continue\n", R + "test_lost_worker.py::test_the_watchdog_ends_a_process_whose_steps_stopped",
     "the watchdog for a worker stuck without a step"),
]


def run(numbers) -> int:
    failures = 0
    for number, (relative, old, new, test, what) in enumerate(MUTATIONS, 1):
        if numbers and number not in numbers:
            continue
        path = REPO / relative
        original = path.read_text()
        if original.count(old) != 1:
            print(f"{number:2d}  STALE    {relative}: the text to replace is not there exactly once; update this table")
            failures += 1
            continue
        try:
            path.write_text(original.replace(old, new))
            result = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", test],
                                    cwd=REPO, capture_output=True, text=True, timeout=1200)
            caught = result.returncode != 0
        except subprocess.TimeoutExpired:
            caught = True  # a hang the test's own deadline turned into a failure
        finally:
            path.write_text(original)
        failures += not caught
        print(f"{number:2d}  {'caught ' if caught else 'MISSED '}  {what}: {test}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(run({int(arg) for arg in sys.argv[1:]}))
