"""What the training Jobs do when the trainer exits with each of its codes, read from the rendered podFailurePolicy the
way the Job controller reads it: 4 (model not blessed), 3 (damaged dataset) and 2 (usage or configuration error)
end the Job without a retry, 143 (SIGTERM) and 5 (a lost worker) are retried to resume from the backup, and a
disruption (preemption, eviction, node drain) is retried without using up backoffLimit."""

import pytest

from tests.k8s.manifests import OVERLAYS, job_specs, name_of, render_overlay

NOT_BLESSED, DAMAGED_DATA, USAGE_ERROR, LOST_WORKER, SIGTERM = 4, 3, 2, 5, 143


def rule_matches(rule: dict, exit_codes: dict, conditions: set) -> bool:
    """One podFailurePolicy rule against a failed pod: exit_codes maps each terminated container to its code,
    conditions are the pod's True conditions (the API reference's matching rules)."""
    if "onExitCodes" in rule:
        requirement = rule["onExitCodes"]
        codes = [code for name, code in exit_codes.items()
                 if code != 0 and requirement.get("containerName") in (None, name)]  # exit 0 never matches
        values = set(requirement["values"])
        if requirement["operator"] == "In":
            return any(code in values for code in codes)
        return any(code not in values for code in codes)  # NotIn
    return any(pattern["type"] in conditions and pattern.get("status", "True") == "True"
               for pattern in rule.get("onPodConditions", []))


def action_for(job: dict, exit_codes: dict, conditions: set = frozenset()) -> str:
    """The first matching rule's action; without a match, the default: the failure counts against backoffLimit."""
    for rule in job.get("podFailurePolicy", {}).get("rules", []):
        if rule_matches(rule, exit_codes, conditions):
            return rule["action"]
    return "Count"


def outcome(job: dict, failures: list) -> str:
    """'retried' or 'failed' after this sequence of failed pods ((exit codes, conditions) each)."""
    counted = 0
    for exit_codes, conditions in failures:
        action = action_for(job, exit_codes, conditions)
        if action == "FailJob":
            return "failed"
        counted += action in ("Count", "FailIndex")
        if counted > job["backoffLimit"]:
            return "failed"
    return "retried"


def training_jobs():
    for overlay in OVERLAYS:
        for obj in render_overlay(overlay):
            if obj["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "train":
                for job in job_specs(obj):
                    yield pytest.param(job, id=f"{overlay}:{name_of(obj)}")


def trainer(code: int) -> dict:
    return {"wait-for-dataset": 0, "train": code}


def test_every_overlay_has_a_training_job():
    assert {param.id.split(":")[0] for param in training_jobs()} == set(OVERLAYS)


@pytest.mark.parametrize("job", training_jobs())
def test_an_unblessed_model_damaged_data_or_a_configuration_error_end_the_job_at_once(job):
    assert job["template"]["spec"]["restartPolicy"] == "Never"  # podFailurePolicy requires it
    for code in (NOT_BLESSED, DAMAGED_DATA, USAGE_ERROR):
        assert action_for(job, trainer(code)) == "FailJob", code
        assert outcome(job, [(trainer(code), set())]) == "failed", code


@pytest.mark.parametrize("job", training_jobs())
def test_sigterm_and_a_lost_worker_are_retried_to_resume_from_the_backup(job):
    assert job["backoffLimit"] >= 2
    for code in (SIGTERM, LOST_WORKER):
        assert action_for(job, trainer(code)) == "Count", code
        assert outcome(job, [(trainer(code), set())] * job["backoffLimit"]) == "retried", code
        assert outcome(job, [(trainer(code), set())] * (job["backoffLimit"] + 1)) == "failed", code


@pytest.mark.parametrize("job", training_jobs())
def test_preemption_and_eviction_do_not_use_up_the_retries(job):
    preempted = (trainer(SIGTERM), {"DisruptionTarget"})
    assert outcome(job, [preempted] * (job["backoffLimit"] + 5)) == "retried"
    # A disrupted pod whose trainer had already decided the model is not blessed still ends the Job.
    assert action_for(job, trainer(NOT_BLESSED), {"DisruptionTarget"}) == "FailJob"


@pytest.mark.parametrize("job", training_jobs())
def test_the_rules_look_at_the_trainer_not_at_the_init_container(job):
    """A wait-for-dataset failure (exit 2 from a typo in DATASET, say) is retried like any crash: it is not the
    trainer's verdict."""
    assert action_for(job, {"wait-for-dataset": USAGE_ERROR}) == "Count"


def test_the_reading_of_the_policy_follows_the_api_reference():
    job = {"backoffLimit": 1, "podFailurePolicy": {"rules": [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
        {"action": "FailJob", "onExitCodes": {"operator": "NotIn", "values": [1]}}]}}
    assert action_for(job, {"a": 3}) == "FailJob"
    assert action_for(job, {"a": 1}) == "Count"  # no rule matches
    assert action_for(job, {"a": 0, "b": 1}) == "Count"  # exit 0 is never "not in" anything
    assert action_for(job, {"a": 3}, {"DisruptionTarget"}) == "Ignore"  # first match wins
    assert outcome(job, [({"a": 1}, set())]) == "retried"
    assert outcome(job, [({"a": 1}, set())] * 2) == "failed"
    assert action_for({"backoffLimit": 0}, {"a": 4}) == "Count"  # no policy at all: everything counts
