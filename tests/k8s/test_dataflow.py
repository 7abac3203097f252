"""The dataflow overlay: the scoring CronJob's pod launches a Dataflow job. Its flags are the base CronJob's scoring
flags plus Dataflow's, every one known to the scorer or to Beam, and Beam's own DataflowRunner validation passes on
them as Kubernetes expands them; the workers run the project's dataflow image; the Dataflow job ends before the pod's
deadline; the launcher is sized for launching, not scoring."""

import re

import pytest
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, WorkerOptions
from apache_beam.options.pipeline_options import _BeamArgumentParser as BeamArgumentParser
from apache_beam.options.pipeline_options_validator import PipelineOptionsValidator
from apache_beam.runners.dataflow.dataflow_runner import DataflowRunner

import beam_pipelines.options  # noqa: F401 - registers the scorer's flags with Beam's parser
from beam_pipelines import cli
from tests.k8s.manifests import K8S, expand, pod_env, render, render_overlay

DIRECT_RUNNER_ONLY = {"--runner", "--direct_running_mode", "--direct_num_workers"}
CRONJOB_JOB_NAME = "score-29412345"  # what the CronJob controller names a run's Job: <cronjob>-<minutes since epoch>
LAUNCH_MARGIN_SECONDS = 600  # the pod's start, the launch before the job and the publish after it


def score_container(objects) -> tuple[dict, dict]:
    [cronjob] = [o for o in objects if o["kind"] == "CronJob"]
    [container] = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    return cronjob, container


def flags(args: list) -> dict:
    parsed = {}
    for arg in args:
        name, _, value = arg.partition("=")
        parsed.setdefault(name, []).append(value)
    return parsed


def launched_args(objects) -> list:
    """The launcher's command line as the pod runs it: $(VAR) expanded from the rendered ConfigMap and env."""
    cronjob, container = score_container(objects)
    config_maps = {o["metadata"]["name"]: o.get("data", {}) for o in objects if o["kind"] == "ConfigMap"}
    labels = {**cronjob["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"],
              "batch.kubernetes.io/job-name": CRONJOB_JOB_NAME}
    env = pod_env(container, config_maps, labels, cronjob["metadata"]["namespace"])
    return [expand(arg, env) for arg in container["args"]]


@pytest.fixture(scope="module")
def dataflow():
    return render_overlay("dataflow")


def test_the_scoring_flags_are_the_base_cronjobs(dataflow):
    """Only what the DirectRunner reads may differ: a scoring flag added to the base must reach Dataflow too."""
    _, base = score_container(render(K8S / "base"))
    _, launcher = score_container(dataflow)
    base_flags, launcher_flags = flags(base["args"]), flags(launcher["args"])
    for name, values in base_flags.items():
        if name not in DIRECT_RUNNER_ONLY:
            assert launcher_flags.get(name) == values, name
    assert launcher_flags["--runner"] == ["DataflowRunner"]
    assert not DIRECT_RUNNER_ONLY - {"--runner"} & set(launcher_flags)
    assert launcher["command"] == base["command"]


def test_every_flag_is_known_and_beam_validates_the_dataflow_options(dataflow):
    args, _ = cli.split_log_format(launched_args(dataflow))  # the console entry point's flag, read before Beam's
    parser = BeamArgumentParser(allow_abbrev=False)
    for options_class in {str(c): c for c in PipelineOptions.__subclasses__()}.values():
        options_class._add_argparse_args(parser)
    _, unknown = parser.parse_known_args(args)
    assert unknown == [], "flags neither the scorer nor Beam knows (a typo would be dropped with a warning)"

    options = PipelineOptions(args + ["--dry_run=True"])  # dry_run: Beam's validation without touching GCS
    errors = PipelineOptionsValidator(options, DataflowRunner()).validate()
    assert errors == []
    cloud = options.view_as(GoogleCloudOptions)
    assert cloud.temp_location.startswith("gs://") and cloud.staging_location.startswith(cloud.temp_location)
    assert re.fullmatch(r"[a-z][-a-z0-9]*[a-z0-9]", cloud.job_name) and CRONJOB_JOB_NAME in cloud.job_name
    assert re.fullmatch(r"[a-z][a-z0-9-]+@[a-z][a-z0-9-]+\.iam\.gserviceaccount\.com", cloud.service_account_email)
    launcher_account = next(o for o in dataflow if o["kind"] == "ServiceAccount"
                            and o["metadata"]["name"] == "catsdogs-score")
    assert cloud.service_account_email != launcher_account["metadata"]["annotations"]["iam.gke.io/gcp-service-account"]
    assert options.view_as(WorkerOptions).max_num_workers >= 1


def test_workers_run_the_projects_dataflow_image_and_install_nothing_at_start(dataflow):
    """setup.py installed on a worker would bring Beam's capped Pillow; the dataflow image carries the override."""
    args = flags(launched_args(dataflow))
    assert args["--sdk_container_image"] == ["catsdogs-dataflow"]  # pinned by make k8s-render (test_manifests)
    for flag in ("--setup_file", "--requirements_file", "--extra_package", "--extra_packages"):
        assert flag not in args


def test_the_dataflow_job_ends_before_the_launcher_is_killed(dataflow):
    cronjob, container = score_container(dataflow)
    job = cronjob["spec"]["jobTemplate"]["spec"]
    [options] = flags(container["args"])["--dataflow_service_options"]
    walltime = int(re.fullmatch(r"max_workflow_runtime_walltime_seconds=(\d+)", options).group(1))
    assert walltime + LAUNCH_MARGIN_SECONDS <= job["activeDeadlineSeconds"]
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"  # runs longer than the schedule skip, never overlap


def test_the_launcher_is_sized_for_launching(dataflow):
    """It builds, submits and waits: a fraction of the scoring pod of the other overlays."""
    _, launcher = score_container(dataflow)
    _, scorer = score_container(render_overlay("cpu"))

    def gib(quantity):
        return float(quantity.removesuffix("Gi"))

    launch, score = launcher["resources"]["limits"], scorer["resources"]["limits"]
    assert float(launch["cpu"]) <= float(score["cpu"]) / 2
    assert 1 <= gib(launch["memory"]) <= gib(score["memory"]) / 2
