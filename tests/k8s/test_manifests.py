"""Every overlay renders, validates against the Kubernetes schemas offline, and every pod template in it
meets Pod Security "restricted", sets requests = limits, and runs as a well-behaved Job or CronJob."""

import re
import subprocess

import kubernetes_validate
import pytest
import yaml

from tests.k8s.manifests import (
    K8S,
    K8S_VERSION,
    OVERLAYS,
    REPO,
    WORKLOAD_KINDS,
    containers,
    job_specs,
    name_of,
    pod_specs,
    render,
    render_overlay,
)

RESOURCES = ("cpu", "memory", "ephemeral-storage")
# Pod Security "restricted" allows only these volume types.
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}


def all_pod_specs():
    for overlay in OVERLAYS:
        for obj in render_overlay(overlay):
            for path, spec in pod_specs(obj):
                yield pytest.param(overlay, obj, spec, id=f"{overlay}:{name_of(obj)}{path}")


def test_there_are_overlays_and_the_base_is_hardware_neutral():
    assert {"cpu", "gpu", "multinode", "dataflow"} <= set(OVERLAYS)
    base = yaml.safe_dump_all(render(K8S / "base"))
    for hardware in ("nvidia.com/gpu", "tolerations", "nodeSelector", "gke-accelerator"):
        assert hardware not in base


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_the_pinned_schemas(overlay):
    objects = render_overlay(overlay)
    assert objects
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)  # raises ValidationError


def test_schema_validation_rejects_a_misspelt_field():
    job = next(obj for obj in render_overlay("cpu") if obj["kind"] == "Job")
    broken = {**job, "spec": {**job["spec"], "backofLimit": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_workload_has_a_pod_template_and_a_namespace(overlay):
    objects = render_overlay(overlay)
    namespaces = [obj for obj in objects if obj["kind"] == "Namespace"]
    assert [ns["metadata"]["name"] for ns in namespaces] == ["catsdogs"]
    labels = namespaces[0]["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    for obj in objects:
        if obj["kind"] in WORKLOAD_KINDS:
            assert pod_specs(obj), f"{name_of(obj)} has no pod template the checks below can see"
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "catsdogs", name_of(obj)
        assert obj["kind"] != "Secret", "no Secrets: identity comes from Workload Identity"


@pytest.mark.parametrize("overlay, obj, spec", all_pod_specs())
def test_pod_meets_pod_security_restricted(overlay, obj, spec):
    pod = spec.get("securityContext", {})
    assert pod.get("runAsNonRoot") is True
    assert isinstance(pod.get("runAsUser"), int) and pod["runAsUser"] > 0
    assert pod.get("seccompProfile", {}).get("type") == "RuntimeDefault"
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        assert not spec.get(host)
    assert spec.get("automountServiceAccountToken") is False
    accounts = {o["metadata"]["name"] for o in render_overlay(overlay) if o["kind"] == "ServiceAccount"}
    assert spec.get("serviceAccountName") in accounts, "a pod with the default account gets no GCS access"
    for volume in spec.get("volumes", []):
        assert set(volume) - {"name"} <= RESTRICTED_VOLUMES, volume
    for container in containers(spec):
        context = container.get("securityContext", {})
        assert context.get("allowPrivilegeEscalation") is False, container["name"]
        assert context.get("capabilities", {}).get("drop") == ["ALL"], container["name"]
        assert not context.get("capabilities", {}).get("add"), container["name"]
        assert context.get("readOnlyRootFilesystem") is True, container["name"]
        assert context.get("privileged") in (None, False)
        assert context.get("runAsNonRoot", True) is True
        assert context.get("runAsUser", pod["runAsUser"]) > 0
        assert context.get("seccompProfile", {"type": "RuntimeDefault"})["type"] == "RuntimeDefault"


@pytest.mark.parametrize("overlay, obj, spec", all_pod_specs())
def test_writable_directories_are_empty_dirs(overlay, obj, spec):
    """A read-only root filesystem needs /tmp, HOME and the TF/Keras/matplotlib caches on emptyDirs."""
    empty_dirs = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
    for container in containers(spec):
        mounts = [m["mountPath"] for m in container.get("volumeMounts", []) if m["name"] in empty_dirs]
        assert "/tmp" in mounts, container["name"]
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        for variable in ("HOME", "TMPDIR"):
            assert any(env.get(variable, "").startswith(m) for m in mounts), (container["name"], variable)
        for variable in ("MPLCONFIGDIR", "KERAS_HOME"):
            if variable in env:
                assert any(env[variable].startswith(m) for m in mounts), (container["name"], variable)


@pytest.mark.parametrize("overlay, obj, spec", all_pod_specs())
def test_requests_equal_limits_and_all_are_set(overlay, obj, spec):
    for container in containers(spec):
        resources = container.get("resources", {})
        requests, limits = resources.get("requests", {}), resources.get("limits", {})
        for resource in RESOURCES:
            assert resource in limits, (container["name"], resource)
        assert requests == limits, container["name"]
    volumes = [v["emptyDir"] for v in spec.get("volumes", []) if "emptyDir" in v]
    assert all("sizeLimit" in v for v in volumes)


@pytest.mark.parametrize("overlay, obj, spec", all_pod_specs())
def test_pods_run_to_completion_under_a_deadline(overlay, obj, spec):
    assert obj["kind"] in ("Job", "CronJob"), "batch project: every workload is a Job or a CronJob"
    assert spec.get("restartPolicy") == "Never"
    for job in job_specs(obj):
        for field in ("backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished"):
            assert isinstance(job.get(field), int) and job[field] >= 0, (name_of(obj), field)
    assert 10 <= spec.get("terminationGracePeriodSeconds", 30) <= 60  # time for the trainer's SIGTERM backup
    assert spec.get("terminationGracePeriodSeconds") is not None


@pytest.mark.parametrize("overlay, obj, spec", all_pod_specs())
def test_pods_are_covered_by_the_network_policy_and_settings_resolve(overlay, obj, spec):
    labels = obj["spec"].get("template", obj["spec"].get("jobTemplate", {}).get("spec", {}).get("template", {}))
    labels = labels.get("metadata", {}).get("labels", {})
    assert labels.get("app.kubernetes.io/name") == "catsdogs"
    config_maps = {o["metadata"]["name"]: o.get("data", {})
                   for o in render_overlay(overlay) if o["kind"] == "ConfigMap"}
    for container in containers(spec):
        known = {e["name"] for e in container.get("env", [])}
        for source in container.get("envFrom", []):
            name = source["configMapRef"]["name"]
            assert name in config_maps, f"{container['name']} reads a ConfigMap that is not rendered: {name}"
            known |= set(config_maps[name])
        words = container.get("command", []) + container.get("args", [])
        for variable in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", " ".join(words)):
            assert variable in known, f"{container['name']}: $({variable}) is never set"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scoring_cronjob_is_safe_to_repeat(overlay):
    cronjobs = [obj for obj in render_overlay(overlay) if obj["kind"] == "CronJob"]
    assert cronjobs
    for cronjob in cronjobs:
        spec = cronjob["spec"]
        assert spec["concurrencyPolicy"] == "Forbid"
        assert 0 < spec["startingDeadlineSeconds"] <= 3600
        assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
        job = spec["jobTemplate"]["spec"]
        [container] = job["template"]["spec"]["containers"]
        args = dict(arg.split("=", 1) for arg in container["args"] if "=" in arg)
        assert args["--skip_scored"] == args["--output_dir"], "incremental: skip what earlier runs scored"
        if args["--runner"] != "DataflowRunner":  # a Dataflow launcher may wait longer: test_dataflow.py
            assert job["activeDeadlineSeconds"] < 3600, "a run must end before the next hourly one starts"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gpus_only_where_training_runs(overlay):
    for obj in render_overlay(overlay):
        for _, spec in pod_specs(obj):
            gpu = [c for c in containers(spec) if "nvidia.com/gpu" in c["resources"]["limits"]]
            is_training = obj["metadata"]["labels"].get("app.kubernetes.io/component") == "train"
            if overlay == "cpu" or not is_training:
                assert not gpu and "tolerations" not in spec, name_of(obj)
                continue
            assert [c["name"] for c in gpu] == ["train"], name_of(obj)
            assert int(gpu[0]["resources"]["limits"]["nvidia.com/gpu"]) >= 1
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
            assert spec["nodeSelector"]["cloud.google.com/gke-accelerator"]
            assert spec["terminationGracePeriodSeconds"] == 30


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_job_has_its_own_workload_identity(overlay):
    objects = render_overlay(overlay)
    emails = {}
    for account in (obj for obj in objects if obj["kind"] == "ServiceAccount"):
        email = account["metadata"]["annotations"]["iam.gke.io/gcp-service-account"]
        assert re.fullmatch(r"[a-z][a-z0-9-]+@[a-z][a-z0-9-]+\.iam\.gserviceaccount\.com", email), email
        assert account.get("automountServiceAccountToken") is False
        emails[account["metadata"]["name"]] = email
    used = {}
    for obj in objects:
        for _, spec in pod_specs(obj):
            used.setdefault(obj["metadata"]["labels"]["app.kubernetes.io/component"], set()).add(
                emails[spec["serviceAccountName"]])
    assert set(used) == {"preprocess", "train", "score"}
    assert all(len(identities) == 1 for identities in used.values())
    assert len(set.union(*used.values())) == 3, "least privilege: one Google service account per job"


def test_no_placeholders_and_no_positional_patches():
    for path in sorted(K8S.rglob("*")):
        if not path.is_file():
            continue
        text = path.read_text()
        assert "<<" not in text and ">>" not in text, path
        if path.name == "kustomization.yaml":
            for patch in yaml.safe_load(text).get("patches", []) + yaml.safe_load(text).get("patchesJson6902", []):
                body = patch.get("patch", "") + ((path.parent / patch["path"]).read_text() if "path" in patch else "")
                assert not re.search(r"path:\s*\S*/\d+(/|\s|$)", body), f"index-based JSON patch in {path}"


def test_make_k8s_render_pins_images_to_the_commit(tmp_path):
    """The documented path: `make k8s-render` wraps each overlay and pins every image to IMAGE_REPO:<commit>."""
    out = tmp_path / "k8s"
    result = subprocess.run(["make", "-s", "k8s-render", f"K8S_OUT={out}", "IMAGE_REPO=registry.example/team"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout.strip()
    assert sorted(p.stem for p in out.glob("*.yaml")) == OVERLAYS
    for overlay in OVERLAYS:
        objects = [doc for doc in yaml.safe_load_all((out / f"{overlay}.yaml").read_text()) if doc]
        images = {c["image"] for obj in objects for _, spec in pod_specs(obj) for c in containers(spec)}
        assert images, overlay
        for image in images:
            assert re.fullmatch(rf"registry\.example/team/catsdogs-(cpu|gpu):{commit}", image), image
        trainer_images = {c["image"] for obj in objects if obj["metadata"]["name"].startswith("train")
                          for _, spec in pod_specs(obj) for c in spec["containers"]}
        expected = "cpu" if overlay == "cpu" else "gpu"
        assert trainer_images == {f"registry.example/team/catsdogs-{expected}:{commit}"}, overlay
        # Images named in env (the Dataflow workers' --sdk_container_image) are pinned the same way.
        named = {e["name"]: e["value"] for obj in objects for _, spec in pod_specs(obj) for c in containers(spec)
                 for e in c.get("env", []) if "catsdogs-" in e.get("value", "")}
        for name, value in named.items():
            assert re.fullmatch(rf"registry\.example/team/catsdogs-\w+:{commit}", value), (overlay, name, value)
        if overlay == "dataflow":
            assert named["SDK_CONTAINER_IMAGE"] == f"registry.example/team/catsdogs-dataflow:{commit}"


ENTRY_POINTS = ("catsdogs-train", "catsdogs-preprocess", "catsdogs-score")


def parse_command_line(program: str, argv: list):
    """The job's own parser, as the console entry point runs it: the config it would run with, or an exception."""
    from beam_pipelines import cli, options
    from trainer import config as train_config

    if program == "catsdogs-train":
        return train_config.parse_args(argv)
    argv, _ = cli.split_log_format(argv)
    own, make = ((options.PreprocessOptions, options.preprocess_config) if program == "catsdogs-preprocess"
                 else (options.ScoreOptions, options.score_config))
    return cli.parse_job(argv, program, own, make)[1]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_job_command_line_parses_with_the_jobs_own_parser(overlay):
    """A flag renamed in the code but not in a manifest fails here, not at 3 a.m. in the cluster."""
    from tests.k8s.manifests import expand, pod_env

    objects = render_overlay(overlay)
    config_maps = {o["metadata"]["name"]: o.get("data", {}) for o in objects if o["kind"] == "ConfigMap"}
    parsed = set()
    for obj in objects:
        for job in job_specs(obj):
            template = job["template"]
            for container in template["spec"]["containers"]:
                [program] = [word for word in container.get("command", []) if word in ENTRY_POINTS] or [None]
                if program is None:
                    continue
                labels = {**template["metadata"].get("labels", {}), "batch.kubernetes.io/job-name": "job-1"}
                env = pod_env(container, config_maps, labels, obj["metadata"].get("namespace", "default"),
                              {"JOB_COMPLETION_INDEX": "0"})
                argv = [expand(arg, env) for arg in container.get("args", [])]
                assert not [arg for arg in argv if "$(" in arg], argv
                assert "--log_format=json" in argv, f"{name_of(obj)}: Cloud Logging parses JSON lines"
                assert parse_command_line(program, argv) is not None
                parsed.add(program)
    assert parsed == set(ENTRY_POINTS), parsed


def test_a_renamed_flag_in_a_manifest_would_be_caught():
    from beam_pipelines import cli

    with pytest.raises(cli.UsageError, match="did you mean --skip_scored"):
        parse_command_line("catsdogs-score", ["--model=gs://b/m/latest", "--input=gs://b/in", "--output_dir=gs://b/o",
                                              "--skip_scored_dir=gs://b/o", "--log_format=json"])
    with pytest.raises(SystemExit):
        parse_command_line("catsdogs-train", ["--data_dir=gs://b/d", "--model_dir=gs://b/m", "--time_budget=5"])
