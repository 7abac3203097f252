"""The Dockerfile lints clean, takes every version from setup.py's PINS and runs as the non-root user the
Kubernetes manifests expect; the Dataflow workers' image is the cpu image plus the SDK harness of the pinned Beam.
There is no Docker engine here: the image is checked, not built."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.k8s.manifests import REPO

DOCKERFILE = REPO / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"


def setup_py(name: str):
    tree = ast.parse((REPO / "setup.py").read_text())
    return next(ast.literal_eval(node.value) for node in tree.body
                if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == name)


def pins() -> dict:
    return setup_py("PINS")


def stages() -> dict:
    """{stage name: its lines} of the multi-stage Dockerfile, base images resolved from the ARGs."""
    text = DOCKERFILE.read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text.split("\nFROM ", 1)[0], re.M))
    found, current = {}, None
    for line in text.splitlines():
        match = re.match(r"FROM (\S+) AS ([\w-]+)$", line)
        if match:
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], match.group(1))
            current = found.setdefault(match.group(2), {"image": image, "lines": []})
        elif current is not None:
            current["lines"].append(line)
    return found


def hadolint(path: Path) -> subprocess.CompletedProcess:
    if not HADOLINT.exists():
        pytest.skip(f"hadolint is not installed at {HADOLINT}")
    return subprocess.run([str(HADOLINT), "--no-color", str(path)], capture_output=True, text=True, timeout=60)


def test_hadolint_passes():
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_would_catch_unpinned_images_and_packages(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    result = hadolint(bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout and "DL3013" in result.stdout


def test_every_hadolint_ignore_says_why():
    lines = DOCKERFILE.read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore=" in line:
            rules = line.split("=", 1)[1].split(",")
            reason = lines[number - 1]
            assert reason.startswith("#") and all(rule.strip() in reason for rule in rules), line


def test_make_lint_runs_hadolint():
    result = subprocess.run(["make", "-n", "lint"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert re.search(r"hadolint Dockerfile$", result.stdout, re.M)


def test_images_are_pinned_and_match_setup_py():
    found = stages()
    assert {"cpu", "gpu", "dataflow"} <= set(found)
    for stage in found.values():
        if stage["image"] in found:
            continue  # built on an earlier stage, whose base is checked
        assert re.fullmatch(r"[\w./-]+:[\w.-]+(@sha256:[0-9a-f]{64})?", stage["image"]), stage["image"]
        assert not stage["image"].endswith(":latest")
    tensorflow = pins()["tensorflow-gpu"].split("==")[1]
    assert found["gpu"]["image"] == f"tensorflow/tensorflow:{tensorflow}-gpu"
    assert found["cpu"]["image"].startswith("python:3.11")
    assert any('".[cpu]"' in line for line in found["cpu"]["lines"])


def test_final_stages_run_as_the_uid_of_the_manifests_and_record_the_code_version():
    from tests.k8s.manifests import OVERLAYS, containers, pod_specs, render_overlay

    uids = {spec["securityContext"]["runAsUser"] for overlay in OVERLAYS for obj in render_overlay(overlay)
            for _, spec in pod_specs(obj)}
    for name in ("cpu", "gpu"):
        lines = stages()[name]["lines"]
        users = [line.split()[1] for line in lines if line.startswith("USER ")]
        assert users and re.fullmatch(r"\d+(:\d+)?", users[-1]), "USER must be numeric for runAsNonRoot"
        assert {int(users[-1].split(":")[0])} == uids
        assert "ARG CATSDOGS_CODE_VERSION=unknown" in lines
        assert any("CATSDOGS_CODE_VERSION=${CATSDOGS_CODE_VERSION}" in line for line in lines)
    assert all(c.get("securityContext", {}).get("runAsUser", 10001) in uids
               for overlay in OVERLAYS for obj in render_overlay(overlay) for _, s in pod_specs(obj)
               for c in containers(s))


def test_gpu_image_installs_the_non_tensorflow_pins_from_setup_py(tmp_path):
    """Runs the Dockerfile's own PINS extraction (the `pins` stage heredoc) on setup.py."""
    text = DOCKERFILE.read_text()
    script = re.search(r"RUN python - <<'PY'\n(.*?)\nPY\n", text, re.S).group(1)
    (tmp_path / "setup.py").write_text((REPO / "setup.py").read_text())
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True, timeout=60)

    installed = (tmp_path / "non-tf-pins.txt").read_text().split()
    overrides = setup_py("OVERRIDES")
    expected = [spec for name, spec in pins().items() if not name.startswith("tensorflow") and name not in overrides]
    assert sorted(installed) == sorted(expected)
    assert all("==" in spec for spec in installed)
    assert (tmp_path / "overrides.txt").read_text().split() == [pins()[name] for name in sorted(overrides)]
    gpu = "\n".join(stages()["gpu"]["lines"])
    assert "-r /tmp/non-tf-pins.txt" in gpu and "--no-deps ." in gpu  # TensorFlow comes from the base image


@pytest.mark.parametrize("stage", ["cpu", "gpu"])
def test_overrides_go_in_last_without_dependencies(stage):
    """setup.py's OVERRIDES (Pillow over Beam's cap) must be installed after everything else, or pip would put the
    capped version back; in the cpu image after `pip check`, which they knowingly fail."""
    run = " ".join(line.strip() for line in stages()[stage]["lines"] if not line.startswith("#"))
    override = run.index("--no-deps -r /tmp/overrides.txt")
    project = run.index('".[cpu]"' if stage == "cpu" else "--no-deps . ")
    assert project < override
    if stage == "cpu":
        assert project < run.index("pip check") < override


def test_dockerignore_sends_only_the_packages():
    lines = (REPO / ".dockerignore").read_text().splitlines()
    ignore = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*", "allow-list: .venv, work/ and build/ must never reach the build context"
    for needed in ("!setup.py", "!beam_pipelines/", "!trainer/"):
        assert needed in ignore


def test_the_dataflow_image_is_the_cpu_image_with_the_sdk_harness_of_the_pinned_beam():
    """Dataflow starts a worker's SDK harness with /opt/apache/beam/boot, which must come from the Beam release the
    launcher runs (PINS) for the image's Python; the packages must be the cpu image's, Pillow override included."""
    found = stages()
    dataflow = found["dataflow"]
    assert dataflow["image"] == "cpu"
    beam = pins()["apache-beam"].split("==")[1]
    python = re.match(r"python:(\d+\.\d+)", found["cpu"]["image"]).group(1)
    assert found["beam-sdk"]["image"] == f"apache/beam_python{python}_sdk:{beam}"
    lines = [line for line in dataflow["lines"] if line and not line.startswith("#")]
    assert "COPY --from=beam-sdk /opt/apache/beam /opt/apache/beam" in lines
    assert [line for line in lines if line.startswith("ENTRYPOINT")] == ['ENTRYPOINT ["/opt/apache/beam/boot"]']
    assert not any(line.startswith("RUN") for line in lines), "nothing reinstalled over the cpu image's packages"


def test_the_cpu_and_gpu_stages_set_the_same_environment():
    """The ENV block is restated in each stage (a stage FROM another base inherits nothing): it must not drift."""
    def env_block(lines):
        start = next(i for i, line in enumerate(lines) if line.startswith("ENV "))
        end = next(i for i in range(start, len(lines)) if not lines[i].rstrip().endswith("\\"))
        return lines[start:end + 1]

    found = stages()
    assert env_block(found["cpu"]["lines"]) == env_block(found["gpu"]["lines"])
    assert any("MPLCONFIGDIR=/scratch/matplotlib" in line for line in env_block(found["cpu"]["lines"]))
