"""Checks that each reliability test can fail: removes one protection at a time and expects its test to fail.

    make mutations                                              # all of them (about 20 minutes on 2 cores)
    .venv/bin/python -m tests.reliability.mutations rlimit_as 3   # by name or number
    .venv/bin/python -m tests.reliability.mutations --list        # the table, and whether each still finds its code

A mutation names the code it changes by file, by the qualified name of the function, method, class or module-level
assignment holding it (found with `ast`, wherever it moved in the file: `Lease.acquire`, `PINS`), and by a small piece
of text that must occur exactly once inside it. The text is matched token by token, so re-indenting or re-wrapping
the code around it does not lose it; a mutation whose code is gone is reported STALE (and fails
tests/reliability/test_mutations_table.py in `make test`). Files that are not Python (manifests) are searched whole.

Not part of `make test`: it edits source files, one at a time, and restores each afterwards (the work tree must be
clean where it edits). docs/RELIABILITY.md's mutation column is this table, and was produced by it.
"""

import ast
import dataclasses
import importlib.util
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
R = "tests/reliability/"
B = "tests/beam_pipelines/"
T = "tests/trainer/"


@dataclasses.dataclass(frozen=True)
class Mutation:
    name: str
    path: str  # relative to the repository
    scope: str  # qualified name of a def, class or module-level assignment; "" for the whole file
    old: str  # text inside the scope, exactly once (whitespace between tokens may differ)
    new: str
    test: str  # pytest node id that must fail under the mutation
    removes: str  # the protection, in words


M = Mutation
MUTATIONS = [
    # ---- hostile image files
    M("pixel_limit", "beam_pipelines/imaging.py", "_check_pixels", "if width * height > max_pixels:", "if False:",
      R + "test_decoder_abuse.py", "the pixel-limit check before decoding"),
    M("allow_list", "beam_pipelines/imaging.py", "ALLOWED_FORMATS", '"WEBP")', '"WEBP", "TIFF")',
      R + "test_decoder_abuse.py", "TIFF added to the decoder allow-list"),
    M("decoder_child", "beam_pipelines/isolation.py", "DecodeRunner.__init__",
      "load_function(self.decode_fn) if not timeout else None", "load_function(self.decode_fn)",
      R + "test_decoder_isolation.py", "the decoder child process (decode in the worker)"),
    M("bytes_in_flight_uncapped", "beam_pipelines/isolation.py", "DecodeRunner.decode_stream",
      "if (sent or batch) and in_bytes + _payload(item[1]) > BYTES_IN_FLIGHT:", "if False:",
      B + "test_reading.py::test_files_go_to_the_child_several_to_a_message_within_the_byte_cap",
      "the cap on file bytes in flight to the decoder child (16 large remote files at once)"),
    M("rlimit_as", "beam_pipelines/isolation.py", "limit_memory",
      "resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))", "pass",
      R + "test_huge_files.py::test_a_file_over_the_byte_cap_and_a_decoder_over_its_memory_limit_each_cost_one_file",
      "the decoder child's address-space limit (RLIMIT_AS)"),
    M("resend_only_after_a_dead_child", "beam_pipelines/isolation.py", "DecodeRunner.decode_stream",
      "if self._process is None:", 'if outcome[0] == "rejected" and outcome[1] in REASONS:',
      R + "test_huge_files.py::test_files_in_flight_behind_a_decoder_out_of_memory_get_their_own_pixels",
      "files in flight sent again only to a new child (not to one that answered a MemoryError)"),
    M("byte_cap_listed_size", "beam_pipelines/reading.py", "_early", "if ref.size > max_bytes:", "if False:",
      R + "test_huge_files.py::test_an_object_over_the_byte_cap_on_gcs_is_never_downloaded",
      "refusing a file over the byte cap from its listed size, before any read"),
    M("byte_cap_child_read", "beam_pipelines/isolation.py", "read_local", "handle.read(file.limit + 1)",
      "handle.read()",
      R + "test_huge_files.py::test_a_file_that_grew_past_the_cap_after_it_was_listed_is_read_no_further_than_the_cap",
      "the decoder child reading at most the cap plus one byte of a local file"),
    M("byte_cap_local_read", "trainer/storage.py", "read_bytes",
      "handle.read() if limit is None else handle.read(limit + 1)", "handle.read()",
      T + "test_storage.py::test_a_file_over_the_cap_is_refused_without_being_read_whole",
      "reading at most the cap plus one byte of a local file"),
    M("byte_cap_gcs_range", "trainer/storage.py", "read_bytes",
      "blob.download_as_bytes(start=0, end=limit, retry=retry_policy())",
      "blob.download_as_bytes(retry=retry_policy())",
      T + "test_storage.py::test_gcs_reads_are_retried_through_transient_errors_and_capped_reads_fetch_at_most_the_cap",
      "a range read of at most the cap plus one byte on GCS"),
    # ---- listing: nothing vanishes
    M("listing_problems", "beam_pipelines/file_listing.py", "_list_local", "yield _entry_ref(path, link, target)",
      "yield from [ref for ref in [_entry_ref(path, link, target)] if ref.problem is None]",
      R + "test_symlinks.py::test_symlinks_are_followed_once_and_broken_links_and_fifos_are_dead_lettered",
      "broken links and FIFOs listed with their problem (dropped silently instead)"),
    M("symlink_loop", "beam_pipelines/file_listing.py", "_list_local", "if key in visited:", "if False:",
      B + "test_file_listing.py::test_a_symlinked_folder_is_walked_once_and_a_loop_or_a_second_link_is_reported",
      "loop protection when following symlinked folders"),
    M("fifo_never_opened", "beam_pipelines/file_listing.py", "_entry_ref", "if not stat.S_ISREG(target.st_mode):",
      "if False:", B + "test_reading.py::test_a_fifo_listed_among_the_files_is_never_opened",
      "FIFOs, sockets and devices listed as not_a_regular_file, never opened"),
    M("unreadable_folder", "beam_pipelines/file_listing.py", "_list_local",
      "yield FileRef(current, 0, 0.0, 0, UNREADABLE_FOLDER)  # its files", "pass  #",
      B + "test_file_listing.py::test_folders_that_cannot_be_read_or_searched_are_reported_and_the_rest_is_listed",
      "a folder that cannot be listed reported as unreadable_folder (vanishes instead)"),
    M("unsearchable_folder", "beam_pipelines/file_listing.py", "_list_local",
      "except OSError:  # e.g. a folder that can be read but not searched", "except FileExistsError:  #",
      B + "test_file_listing.py::test_folders_that_cannot_be_read_or_searched_are_reported_and_the_rest_is_listed",
      "a folder that can be read but not searched reported, not a failed listing"),
    M("missing_path_lists_nothing", "beam_pipelines/file_listing.py", "_list_local",
      "or os.path.isdir(prefix) or not raw_prefix", "or os.path.isdir(prefix)",
      B + "test_file_listing.py::test_a_folder_is_listed_recursively_with_absolute_paths_and_sizes",
      "a path that does not exist lists nothing (not its parent folder)"),
    M("gcs_glob_prefix", "beam_pipelines/file_listing.py", "_list_gcs", "and not raw_prefix:", ":",
      B + "test_file_listing.py::test_gcs_globs_single_objects_and_vanished_objects",
      "a GCS glob with its wildcard inside a name listed by name prefix"),
    # ---- names that are not UTF-8
    M("display_path", "trainer/storage.py", "display_path",
      'return os.fsencode(path).decode("utf-8", "backslashreplace")', "return path",
      R + "test_odd_names.py::test_names_that_are_not_utf8_are_scored_or_dead_lettered_and_every_output_is_valid_utf8",
      "non-UTF-8 names shown as valid UTF-8 in outputs"),
    M("retry_list_utf8", "beam_pipelines/predictions.py", "CommitBatchFn.process",
      "retry.append(storage.display_path(ref.path))", "retry.append(ref.path)",
      R + "test_odd_names.py::test_names_that_are_not_utf8_are_scored_or_dead_lettered_and_every_output_is_valid_utf8",
      "the retry list in valid UTF-8 (a non-UTF-8 name failing transiently failed the job)"),
    M("join_on_path_bytes", "beam_pipelines/changes.py", "_path_key", "return storage.path_key(entry[0])",
      "return entry[0].encode()",
      R + "test_odd_names.py::test_preprocessing_carries_names_that_are_not_utf8_into_valid_records_and_grows_the_"
          "dataset_over_them", "joining a grown folder with the dataset on the path's bytes"),
    # ---- transient GCS errors and ambiguous writes
    M("gcs_retry", "trainer/storage.py", "retry_policy", "return DEFAULT_RETRY.with_timeout(RETRY_SECONDS)",
      "return None", R + "test_transient_io.py", "google-cloud-storage's retry policy on every GCS call"),
    M("preflight_retry", "trainer/credentials.py", "check_reachable", "retry=DEFAULT_RETRY.with_timeout(seconds)",
      "retry=None", R + "test_transient_io.py::test_transient_gcs_errors_are_retried_and_a_deleted_object_is_dead_"
                        "lettered", "retrying a transient error while checking at launch that a bucket is reachable"),
    M("gcs_publish_own_write", "trainer/publish.py", "_upload", "if _same_content(blob, path):", "if False:",
      R + "test_gcs_ambiguous_write.py::test_gcs_publish_survives_lost_replies_without_overwriting",
      "recognising our own completed write after a 412 (trainer publish)"),
    M("dataset_pointer_own_write", "beam_pipelines/preprocess.py", "publish",
      "and storage.read_versioned(path)[0] != pointer", "",
      R + "test_gcs_ambiguous_write.py::test_preprocessing_publishes_once_when_the_replies_to_its_lease_and_pointer_"
          "writes_are_lost", "recognising our own `latest` write after a 412 (preprocessing)"),
    # ---- run lease
    M("lease_refusal", "beam_pipelines/lifecycle.py", "Lease.acquire", "if why is None:", "if False:",
      R + "test_run_lease.py", "refusing a second run while a live one holds the lease"),
    M("lease_dead_pid", "beam_pipelines/lifecycle.py", "Lease._is_dead",
      'if holder.get("host") == socket.gethostname() and', "if False and",
      R + "test_run_lease.py::test_a_second_run_of_a_run_id_refuses_while_the_first_runs_and_takes_over_once_it_is_"
          "killed", "taking over at once the lease of a process gone from this host"),
    M("lease_lost", "beam_pipelines/lifecycle.py", "Lease._renew", "self.lost.set()", "pass",
      B + "test_lifecycle.py::test_the_holder_renews_its_lease_and_learns_when_another_run_took_it",
      "a holder learning that another run took its lease (it must not publish)"),
    M("lease_own_write", "beam_pipelines/lifecycle.py", "Lease.acquire",
      'elif holder.get("owner") == self.owner:', "elif False:",
      B + "test_lifecycle.py::test_a_gcs_lease_is_exclusive_and_a_lost_reply_to_its_own_writes_does_not_cost_it",
      "recognising the lease's own create after a lost reply"),
    # ---- killed jobs
    M("resume_committed", "beam_pipelines/incremental.py", "SkipAccounted.__call__",
      "if len(self._done) and contains(self._done, path_hash(ref.path)):", "if False:",
      R + "test_killed_job.py::test_a_run_killed_half_way_resumes_without_scoring_again_what_it_had_committed",
      "a resumed scoring run skipping what its committed batches hold"),
    M("marker_temporary_files", "beam_pipelines/score.py", "_marker_paths",
      'if not ref.path.rsplit("/", 1)[-1].startswith(".")', "",
      R + "test_killed_job.py::test_a_run_killed_while_it_commits_or_publishes_gives_one_complete_set_when_run_again"
          "[while_writing_a_commit_marker]", "ignoring the temporary file of a marker whose write was killed"),
    M("publish_aside_name", "beam_pipelines/lifecycle.py", "publish_directory", 'aside = f"{final}.old"',
      'aside = f"{final}.old-{os.getpid()}"',
      R + "test_killed_job.py::test_a_run_killed_while_it_commits_or_publishes_gives_one_complete_set_when_run_again"
          "[after_the_previous_set_moved_aside]", "one name for the set moved aside, removed by the next publish"),
    M("dead_versions_removed", "beam_pipelines/preprocess.py", "plan_version", "storage.delete_tree(dead)", "pass",
      R + "test_killed_job.py::test_a_preprocessing_run_killed_before_it_publishes_leaves_the_current_version_and_"
          "the_rerun_makes_one[while_writing_shards]", "removing the version a killed preprocessing run left"),
    M("rejection_threshold", "beam_pipelines/preprocess.py", "run",
      "too_many_rejected = check_rejections(metadata, config.max_rejected_fraction)", "too_many_rejected = None",
      R + "test_rejection_threshold.py", "the rejection-rate check"),
    # ---- training
    # A damaged shard meets two guards since the trainer counts every split's records (CRC-checked) before training:
    # test_corrupt_shard.py (the whole trainer) passes with either one removed, so the input pipeline's own guard is
    # checked by its own test.
    M("ignore_errors", "trainer/data.py", "make_dataset",
      "dataset = dataset.map(parse, num_parallel_calls=autotune, deterministic=not training)",
      "dataset = dataset.map(parse, num_parallel_calls=autotune, deterministic=not training).ignore_errors()",
      "tests/trainer/test_data.py::test_corrupt_tfrecord_fails_loudly",
      "the input pipeline failing on damaged records (ignore_errors)"),
    M("backup_restore", "trainer/backup.py", "ResumableBackup.on_train_begin",
      "backup = choose_backup(self.backup_dir)", "backup = None",
      "tests/trainer/test_train.py::test_sigkill_mid_epoch_then_same_command_resumes_from_backup",
      "restoring the backup on start"),
    M("backup_weights", "trainer/backup.py", "ResumableBackup.on_train_begin",
      "load_weights_file(self.model, backup.weights)", "pass",
      "tests/trainer/test_train.py::test_sigkill_mid_epoch_then_same_command_resumes_from_backup",
      "restoring the backup's weights (the epoch still resumes)"),
    M("backup_checksum", "trainer/backup.py", "_check_backup",
      "if expected is not None and storage.sha256(weights) != expected:", "if False:", R + "test_corrupt_backup.py",
      "the backup checksum"),
    M("lost_worker_exit", "trainer/distribute.py", "lost_worker_guard",
      "if not placement.multi_worker:\n            raise", "raise",
      R + "test_lost_worker.py::test_losing_a_worker_makes_the_other_exit_5_within_the_bound",
      "exit status 5 for a lost worker"),
    M("watchdog", "trainer/distribute.py", "Watchdog._watch",
      "if idle < self.timeout_seconds:\n                continue", "if True:\n                continue",
      R + "test_lost_worker.py::test_the_watchdog_ends_a_process_whose_steps_stopped",
      "the watchdog for a worker stuck without a step"),
    M("budget_schedule", "trainer/schedules.py", "TimeBudget.on_train_batch_begin",
      "self.progress.assign(min(fraction, 1.0))", "pass",
      "tests/trainer/test_schedules.py::test_time_budget_anneals_to_zero_and_stops_exactly_when_the_budget_is_used",
      "the learning rate following the time budget"),
    M("no_early_stop_in_budget", "trainer/train.py", "make_callbacks", "elif cfg.early_stopping_patience:",
      "if cfg.early_stopping_patience:",
      "tests/trainer/test_train.py::test_early_stopping_never_cuts_a_budget_run_short",
      "early stopping off while the budget schedule anneals"),
    M("flip_tta", "trainer/export.py", "build_archive.predict", 'if tta == "flip":', "if False:",
      "tests/trainer/test_export.py::test_flip_tta_serves_the_mean_of_the_photo_and_its_mirror_image",
      "flip test-time augmentation in the export"),
    M("no_abbreviated_flags", "trainer/config.py", "build_parser", "allow_abbrev=False,", "allow_abbrev=True,",
      "tests/trainer/test_config.py::test_unknown_and_abbreviated_flags_exit_2_with_a_suggestion",
      "refusing abbreviated flags (--epoch 1 taken for --epochs)"),
    M("mixup_not_applied", "trainer/data.py", "make_dataset", "if training and mixup_alpha > 0:", "if False:",
      "tests/trainer/test_data.py::test_training_batches_carry_blended_labels_only_when_mixed",
      "--mixup_alpha reaching the training batches"),
    M("cutmix_not_applied", "trainer/data.py", "make_dataset", "if training and cutmix_alpha > 0:", "if False:",
      "tests/trainer/test_data.py::test_training_batches_carry_blended_labels_only_when_mixed",
      "--cutmix_alpha reaching the training batches"),
    M("lr_decay_not_wired", "trainer/schedules.py", "for_run",
      "BudgetSchedule(plan.peak_rate, plan.warmup_steps, progress, cfg.lr_decay)",
      "BudgetSchedule(plan.peak_rate, plan.warmup_steps, progress)",
      "tests/trainer/test_train.py::test_lr_decay_linear_reaches_the_optimizer_with_and_without_a_budget",
      "--lr_decay reaching the time budget's learning-rate schedule"),
    M("steps_counted_as_whole_epochs", "trainer/train.py", "training_facts", "steps = trained.steps",
      "steps = trained.epochs * plan.steps_per_epoch",
      "tests/trainer/test_train.py::test_metrics_count_the_steps_run_when_the_budget_stops_mid_epoch",
      "metrics.json's step count and rate counting the steps run (a budget-cut last epoch counted in full)"),
    M("fullres_scores_root_accepted", "benchmarks/fullres_agreement.py", "main", "if problem:", "if False:",
      "tests/benchmarks/test_fullres_agreement.py::test_a_scores_root_instead_of_a_run_exits_2_naming_the_newest_run",
      "fullres_agreement refusing a --scores folder without predictions (it reported 0 photos and exit 0)"),
    # ---- models: provenance and promotion
    M("model_checksums", "beam_pipelines/model_handler.py", "check_model", "verify_files(model_dir, info)", "pass",
      R + "test_untrusted_models.py::test_a_valid_model_with_swapped_weights_is_refused_by_its_checksums",
      "the checksum check at launch"),
    M("keras_files", "beam_pipelines/model_handler.py", "resolve_and_check_model",
      "# Never handed to keras.models.load_model: a Keras file's Lambda layers carry Python bytecode.",
      "__import__('keras').models.load_model(model, safe_mode=False)",
      R + "test_untrusted_models.py::test_a_keras_file_with_a_lambda_layer_never_runs",
      "refusing Keras files (load them unsafely)"),
    M("prefix_realpath", "beam_pipelines/model_handler.py", "_under_prefix",
      "else os.path.realpath(path)", "else os.path.abspath(path)",
      R + "test_untrusted_models.py::test_a_model_outside_the_allowed_prefix_is_refused_even_through_a_symlink",
      "resolving symlinks before the prefix check"),
    M("latest_is_a_version", "trainer/model_contract.py", "parse_pointer", "if not is_version(text):", "if False:",
      R + "test_untrusted_models.py::test_a_latest_pointer_naming_a_path_instead_of_a_version_is_refused",
      "the version check on `latest`"),
    M("files_keys", "trainer/model_contract.py", "check_files", "problem = file_key_problem(key)", "problem = None",
      R + "test_untrusted_models.py::test_crafted_files_keys_of_a_gcs_model_are_refused_before_anything_is_copied",
      "validating model_info.json's `files` keys before a gs:// model is copied"),
    M("model_info_sha256", "beam_pipelines/model_handler.py", "read_model_info",
      "if expected_sha256 is not None:\n        actual =", "if False:\n        actual =",
      R + "test_untrusted_models.py::test_a_model_info_rewritten_with_its_files_is_caught_by_the_pointers_sha256",
      "comparing model_info.json with the sha256 `latest` records"),
    M("bytes_signature_bombs", "trainer/export.py", "build_archive.decode_one",
      "data = image_headers.check_pixel_limit(data, model_contract.MAX_IMAGE_PIXELS)", "pass",
      R + "test_bytes_signature_bombs.py", "the bytes signature's pixel limit before decoding"),
    M("promotion_gate", "trainer/promotion.py", "decide", '"passed": value is not None and value >= limit})',
      '"passed": True})', R + "test_model_promotion.py::test_a_worse_model_is_not_published_and_the_trainer_exits_4",
      "the comparison with the current `latest` in the promotion gate"),
    M("promotion_moves_latest", "trainer/promotion.py", "promote",
      "move_latest=movable and (blessed or gate.force_publish),", "move_latest=False,",
      R + "test_model_promotion.py::test_a_better_model_is_published", "moving `latest` to a blessed model"),
    M("first_model", "trainer/promotion.py", "read_baseline", "if pointer is None:\n        return None, None",
      'if pointer is None:\n        return None, {"version": None, "comparable": False, "problem": "none"}',
      R + "test_model_promotion.py::test_the_first_model_needs_no_baseline",
      "publishing a first model without a baseline"),
    M("version_clock", "trainer/model_contract.py", "next_version", "return str(max(int(now), newest + 1))",
      "return str(int(now))",
      R + "test_model_promotion.py::test_a_version_made_with_a_clock_an_hour_behind_still_becomes_latest",
      "versions newer than every published one whatever the clock"),
    M("rollback_verify", "trainer/publish.py", "check_version",
      "_verify(model_contract.join(export_root, version), info, version)", "pass",
      "tests/trainer/test_rollback.py::test_rollback_refuses_a_broken_version",
      "verifying a version's checksums before `latest` is rolled back to it"),
    M("pillow_pin", "setup.py", "PINS", '"pillow": "pillow==13.0.0",', '"pillow": "pillow==12.3.0",',
      R + "test_dependency_pins.py", "the Pillow pin moved without reinstalling (or updating RELIABILITY.md)"),
    # ---- deployment
    M("workers_ingress", "k8s/overlays/multinode/networkpolicy.yaml", "",
      "ingress:\n    - from:\n        - podSelector:\n            matchLabels:\n"
      "              batch.kubernetes.io/job-name: train-workers",
      "ingress:\n    - from:\n        - podSelector:\n            matchLabels:\n"
      "              app.kubernetes.io/name: catsdogs",
      "tests/k8s/test_network_policy.py", "training workers' gRPC port open to every catsdogs pod"),
    M("default_deny", "k8s/base/networkpolicy.yaml", "", "podSelector: {}\n  policyTypes:\n    - Ingress",
      "podSelector: {}\n  policyTypes:", "tests/k8s/test_network_policy.py", "the namespace's default deny of ingress"),
    M("egress_443", "k8s/base/networkpolicy.yaml", "",
      "- fe80::/10\n      ports:\n        - protocol: TCP\n          port: 443", "- fe80::/10",
      "tests/k8s/test_network_policy.py", "the port limit on egress to outside addresses (443 only)"),
    M("unblessed_ends_job", "k8s/base/train-job.yaml", "", "operator: In\n          values: [2, 3, 4]",
      "operator: In\n          values: [2, 3]", "tests/k8s/test_job_failures.py",
      "ending the training Job when the model is not blessed (exit 4 retried instead)"),
    M("dataflow_model_prefix", "k8s/components/dataflow-scoring/score-launcher.yaml", "",
      "- --allowed_model_prefix=$(MODEL)", "", "tests/k8s/test_dataflow.py",
      "the base CronJob's --allowed_model_prefix on the Dataflow launcher"),
    M("eval_side_warning", "trainer/final_model.py", "check_eval_side",
      'if at_eval_side["accuracy"] < at_training_side["accuracy"]:',
      'if at_eval_side["accuracy"] >= at_training_side["accuracy"]:',
      T + "test_train.py::test_recipe_options_ema_flip_tta_and_a_larger_evaluation_size",
      "the warning when --eval_input_size exports the less accurate side (on validation)"),
    M("progressive_resize_ignored", "trainer/data.py", "resize_batch",
      "return tf.cond(side < tf.shape(images)[1], smaller, lambda: images)", "return images",
      T + "test_data.py::test_progressive_resizing_batches_follow_the_side_variable",
      "progressive resizing's smaller training batches (every batch would stay at the full side)"),
    M("progressive_default", "trainer/config.py", "TrainConfig.start_side",
      "start = DEFAULT_PROGRESSIVE_FROM if self.model == RESNET_LITE else 0", "start = 0",
      T + "test_config.py::test_progressive_start_side",
      "progressive resizing as resnet_lite's default (the default run would train at 160 throughout)"),
    M("resize_ignores_budget", "trainer/train.py", "progressive_resize",
      "progress=budget_progress)", "progress=None)",
      T + "test_train.py::test_progressive_resizing_follows_the_time_budget_not_the_epochs",
      "progressive resizing following the time budget (a budget run cut short of its --epochs would never grow)"),
    M("fused_norm_variance_unbiased", "trainer/fused_norm.py", "FusedBatchNormalization.call",
      "variance = variance * (count - 1.0) / tf.maximum(count, 1.0)", "variance = variance",
      "tests/trainer/test_fused_norm.py::test_a_training_step_matches_keras_outputs_gradients_and_moving_statistics",
      "the fused batch norm's moving variance kept biased, as Keras keeps it"),
    M("fused_norm_not_taken", "trainer/fused_norm.py", "FusedBatchNormalization.call",
      "if not self._fusable(inputs, mask):", "if True:",
      "tests/trainer/test_fused_norm.py::test_resnet_lite_trains_and_infers_through_the_fused_kernel",
      "resnet_lite's training step and inference going through the fused batch-norm kernel"),
    M("fused_norm_inference_batch_statistics", "trainer/fused_norm.py", "FusedBatchNormalization.call",
      "is_training=False)[0]", "is_training=True)[0]",
      "tests/trainer/test_fused_norm.py::test_a_training_step_matches_keras_outputs_gradients_and_moving_statistics",
      "the fused batch norm's inference normalizing with the moving statistics, not the batch's"),
    M("start_side_cache_not_taken", "trainer/data.py", "make_dataset",
      "resized = _by_training_side(small, resized, train_side, low_side)", "pass",
      T + "test_data.py::test_the_start_side_batches_come_from_a_second_cache_holding_the_same_photos_resized_once",
      "the second cache of the training split at progressive resizing's start side (every batch resized again)"),
    M("start_side_cache_not_counted", "trainer/data.py", "should_cache",
      'pixels += split_size(metadata, "train") * low_side * low_side', "pass",
      T + "test_data.py::test_shard_policy_and_cache_choice",
      "--cache auto counting the start side's second cache against --cache_limit_mb"),
    M("colour_jitter_contrast_about_zero", "trainer/data.py", "jitter_colour",
      "offset = (1.0 - contrast) * mean + brightness * 255.0", "offset = brightness * 255.0",
      T + "test_data.py::test_colour_jitter_applies_the_per_pixel_formulas_as_one_matrix_per_image",
      "the colour jitter's contrast about each image's mean grey (as one matrix per image)"),
    # ---- benchmarks
    M("bench_stopped_writes_nothing", "benchmarks/bench.py", "main",
      'write(f"during {name}', '(f"during {name}',
      "tests/benchmarks/test_results.py::test_a_run_stopped_by_sigterm_writes_what_it_measured_before_it_exits",
      "a stopped make bench writing the figures it finished"),
    M("bench_partial_run_drops_sections", "benchmarks/bench.py", "main",
      "sections = results.load(output)", "sections = {}",
      "tests/benchmarks/test_results.py::test_a_run_of_one_section_keeps_the_others_marked_with_their_run",
      "a make bench of some sections keeping the others' figures in RESULTS.md"),
    M("bench_complete_run_keeps_stale_rows", "benchmarks/bench.py", "main",
      "if report.left_out:", "if True:",
      "tests/benchmarks/test_results.py::test_a_section_that_ran_all_its_cases_replaces_its_earlier_figures_whole",
      "a section that ran all its cases replacing its earlier figures (renamed rows would linger, marked earlier)"),
    M("bench_stop_leaves_job", "benchmarks/harness.py", "run_command", "_kill_tree(process)", "pass",
      "tests/benchmarks/test_results.py::test_a_stopped_run_kills_the_job_it_was_measuring",
      "a stopped make bench killing the job it was measuring (it would run on alone)"),
]


class Stale(Exception):
    """The mutation's code is not where the table says: update the table."""


def _scopes(tree) -> dict:
    """Qualified name -> (first line, last line) of every def, class and module-level (or class-level) assignment."""
    found = {}

    def walk(node, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = prefix + child.name
                found[name] = (child.lineno, child.end_lineno)
                walk(child, name + ".")
            elif isinstance(child, (ast.Assign, ast.AnnAssign)):
                targets = child.targets if isinstance(child, ast.Assign) else [child.target]
                for target in targets:
                    if isinstance(target, ast.Name):
                        found[prefix + target.id] = (child.lineno, child.end_lineno)

    walk(tree, "")
    return found


def _pattern(text: str) -> re.Pattern:
    """The text's tokens in order, any whitespace between them."""
    return re.compile(r"\s+".join(re.escape(token) for token in text.split()))


def mutated(mutation: Mutation) -> tuple[Path, str, str]:
    """(file, its text, its text with the mutation applied); Stale when the code cannot be found exactly once."""
    path = REPO / mutation.path
    if not path.is_file():
        raise Stale(f"{mutation.path} does not exist")
    text = path.read_text()
    start, end = 0, len(text)
    if mutation.scope:
        scopes = _scopes(ast.parse(text))
        if mutation.scope not in scopes:
            raise Stale(f"{mutation.path} has no {mutation.scope}")
        first, last = scopes[mutation.scope]
        lines = text.splitlines(keepends=True)
        start, end = sum(map(len, lines[:first - 1])), sum(map(len, lines[:last]))
    matches = list(_pattern(mutation.old).finditer(text, start, end))
    if len(matches) != 1:
        raise Stale(f"{mutation.path}:{mutation.scope or '(file)'} holds {mutation.old!r} {len(matches)} times")
    match = matches[0]
    return path, text, text[:match.start()] + mutation.new + text[match.end():]


def check_test_exists(mutation: Mutation) -> None:
    """Stale when the test file, or the test function a node id names, is gone."""
    file, _, node = mutation.test.partition("::")
    if not (REPO / file).exists():
        raise Stale(f"{file} does not exist")
    function = node.split("[")[0]
    if function and not re.search(rf"^def {re.escape(function)}\(", (REPO / file).read_text(), re.MULTILINE):
        raise Stale(f"{file} has no test {function}")


def _write(path: Path, text: str) -> None:
    path.write_text(text)
    if path.suffix == ".py":  # a cached .pyc of the other version must not be used (same size, same second)
        Path(importlib.util.cache_from_source(str(path))).unlink(missing_ok=True)


def run_one(mutation: Mutation) -> tuple[str, float]:
    """("caught" | "MISSED" | "STALE: why", seconds)."""
    try:
        check_test_exists(mutation)
        path, original, changed = mutated(mutation)
    except Stale as stale:
        return f"STALE: {stale}", 0.0
    started = time.monotonic()
    try:
        _write(path, changed)
        result = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", mutation.test],
                                cwd=REPO, capture_output=True, text=True, timeout=1200)
        caught = result.returncode == 1  # tests failed (2-5 would be pytest's own errors: a broken table)
        if result.returncode not in (0, 1):
            return f"ERROR: pytest exit {result.returncode}: {result.stdout[-300:]}", time.monotonic() - started
    except subprocess.TimeoutExpired:
        caught = True  # a hang the test's own deadline did not turn into a failure; still not a pass
    finally:
        _write(path, original)
    return ("caught" if caught else "MISSED"), time.monotonic() - started


def _selected(args) -> list[tuple[int, Mutation]]:
    numbered = list(enumerate(MUTATIONS, 1))
    if not args:
        return numbered
    wanted = set(args)
    return [(number, m) for number, m in numbered if str(number) in wanted or m.name in wanted]


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--list" in args:
        for number, mutation in _selected([a for a in args if a != "--list"]):
            try:
                check_test_exists(mutation)
                mutated(mutation)
                state = "ok"
            except Stale as stale:
                state = f"STALE: {stale}"
            print(f"{number:2d} {mutation.name:32s} {state:6s} {mutation.removes}")
        return 0
    failures, rows = 0, []
    for number, mutation in _selected(args):
        outcome, seconds = run_one(mutation)
        failures += outcome != "caught"
        rows.append((number, mutation, outcome))
        print(f"{number:2d}  {outcome:7s} {seconds:5.0f} s  {mutation.name}: {mutation.removes} -> {mutation.test}",
              flush=True)
    print(f"\n{len(rows) - failures} of {len(rows)} mutations caught")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
