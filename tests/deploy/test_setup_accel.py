"""`make setup` picks the TensorFlow build: GPU when `nvidia-smi -L` lists a GPU (or ACCEL=gpu), CPU otherwise (or
ACCEL=cpu), and switches an existing .venv cleanly. No GPU here: a stand-in `nvidia-smi` on PATH plays the machine,
and `make -n` shows what would be installed without installing anything."""

import os
import re
import stat
import subprocess

import pytest

from tests.k8s.manifests import REPO

L4_LISTING = "GPU 0: NVIDIA L4 (UUID: GPU-9a1c3e2b-5d6f-4a7b-8c9d-0e1f2a3b4c5d)"
DRIVER_FAILURE = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."


@pytest.fixture
def machine(tmp_path):
    """make_n(nvidia_smi, *make_args) -> the commands `make -n setup` would run, on a machine whose nvidia-smi
    prints `nvidia_smi` (None: it exits 9 with the driver error) into a fresh VENV under tmp_path."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    venv = tmp_path / "venv"

    def make_n(nvidia_smi, *make_args, check=True):
        script = bin_dir / "nvidia-smi"
        if nvidia_smi is None:
            script.write_text(f"#!/bin/sh\necho '{DRIVER_FAILURE}'\nexit 9\n")
        else:
            script.write_text(f"#!/bin/sh\n[ \"$1\" = -L ] || exit 2\necho '{nvidia_smi}'\n")
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
        env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
        env.pop("ACCEL", None)
        result = subprocess.run(["make", "-n", "setup", f"VENV={venv}", *make_args], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=60)
        if check:
            assert result.returncode == 0, result.stderr
        return result

    make_n.venv = venv
    return make_n


def installed_extra(commands: str) -> str:
    [extra] = re.findall(r"pip install --quiet -e '\.\[(\w+),test,bench\]'", commands)
    return extra


def test_a_machine_listing_a_gpu_gets_the_gpu_build(machine):
    assert installed_extra(machine(L4_LISTING).stdout) == "gpu"


@pytest.mark.parametrize("nvidia_smi", ["", None], ids=["no-gpu-listed", "driver-failure"])
def test_a_machine_without_a_working_gpu_gets_the_cpu_build(machine, nvidia_smi):
    assert installed_extra(machine(nvidia_smi).stdout) == "cpu"


def test_accel_overrides_the_detection_both_ways(machine):
    assert installed_extra(machine(L4_LISTING, "ACCEL=cpu").stdout) == "cpu"
    assert installed_extra(machine("", "ACCEL=gpu").stdout) == "gpu"
    assert installed_extra(machine(L4_LISTING, "ACCEL=").stdout) == "gpu"  # empty: detect


def test_an_unknown_accel_is_refused_with_the_choices(machine):
    result = machine(L4_LISTING, "ACCEL=tpu", check=False)
    assert result.returncode != 0
    assert "ACCEL must be cpu or gpu (got 'tpu')" in result.stderr


def test_switching_builds_removes_the_other_one_first_and_the_stamp_records_the_build(machine):
    venv = machine.venv
    venv.mkdir()
    (venv / ".installed-cpu").touch()  # a .venv set up with the CPU build, newer than setup.py

    commands = machine(L4_LISTING).stdout.splitlines()
    uninstall = next(i for i, line in enumerate(commands) if "pip uninstall" in line)
    install = next(i for i, line in enumerate(commands) if "pip install --quiet -e" in line)
    assert uninstall < install
    assert re.search(r"pip uninstall --quiet --yes tensorflow-cpu\b", commands[uninstall])
    assert installed_extra("\n".join(commands)) == "gpu"
    assert any(re.fullmatch(rf"touch {re.escape(str(venv))}/\.installed-gpu", line) for line in commands)
    assert any(f"rm -f {venv}/.installed {venv}/.installed-cpu" in line for line in commands)

    # Back to CPU, from the state the switch above leaves: the GPU build and the CUDA wheels it brought go.
    (venv / ".installed-cpu").rename(venv / ".installed-gpu")
    commands = machine(L4_LISTING, "ACCEL=cpu").stdout
    assert re.search(r"pip uninstall --quiet --yes tensorflow \\\n.*grep -E '\^nvidia-'", commands)
    assert installed_extra(commands) == "cpu"


def test_an_installed_build_matching_the_machine_is_left_alone(machine):
    venv = machine.venv
    venv.mkdir()
    (venv / ".installed-gpu").touch()
    os.utime(venv / ".installed-gpu", (2**31, 2**31))  # newer than setup.py, whatever the checkout's mtimes
    assert "pip" not in machine(L4_LISTING).stdout
    assert installed_extra(machine("").stdout) == "cpu"  # the same .venv on a machine without GPUs
