"""The trainer says which devices it trains on, and warns loudly when the machine has NVIDIA GPUs that TensorFlow
does not see (a CPU-only TensorFlow on a GPU node). No GPU here: a stand-in `nvidia-smi` on PATH lists one."""

import logging
import os
import stat

import pytest

from trainer import distribute, logger

FAKE_NVIDIA_SMI = """#!/bin/sh
if [ "$1" = "-L" ]; then
  echo "GPU 0: NVIDIA L4 (UUID: GPU-00000000-1111-2222-3333-444444444444)"
  exit 0
fi
exit 9
"""


def stand_in_nvidia_smi(folder, monkeypatch):
    folder.mkdir()
    script = folder / "nvidia-smi"
    script.write_text(FAKE_NVIDIA_SMI)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")


@pytest.fixture(autouse=True)
def keep_dtype_policy():
    """distribute.choose sets the process's Keras dtype policy: give the next test in this process its own back."""
    import keras

    policy = keras.mixed_precision.global_policy()
    yield
    keras.mixed_precision.set_global_policy(policy)


def test_a_gpu_listed_by_nvidia_smi_but_invisible_to_tensorflow_is_a_loud_warning(tmp_path, monkeypatch, caplog):
    stand_in_nvidia_smi(tmp_path / "bin", monkeypatch)
    assert distribute.nvidia_gpus() == ["GPU 0: NVIDIA L4 (UUID: GPU-00000000-1111-2222-3333-444444444444)"]
    monkeypatch.setattr(logging.getLogger(logger.NAME), "propagate", True)  # let caplog see it
    with caplog.at_level(logging.WARNING, logger=logger.NAME):
        placement = distribute.choose("auto")  # this TensorFlow sees no GPU
    assert placement.devices and placement.precision in ("float32", "mixed_bfloat16")  # never float16 on a CPU
    [record] = [r for r in caplog.records if "nvidia-smi" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert "1 GPU(s)" in record.getMessage() and "TRAINS ON THE CPU" in record.getMessage()


def test_no_nvidia_smi_means_no_gpus_and_no_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing there
    assert distribute.nvidia_gpus() == []
    monkeypatch.setattr(logging.getLogger(logger.NAME), "propagate", True)
    with caplog.at_level(logging.WARNING, logger=logger.NAME):
        distribute.warn_if_gpus_unused()
    assert not caplog.records


@pytest.mark.parametrize("flag, gpu, amx, policy", [
    ("auto", True, False, "mixed_float16"),
    ("auto", False, True, "mixed_bfloat16"),  # AMX: bfloat16 convolutions about twice as fast as float32
    ("auto", False, False, "float32"),  # other CPUs: bfloat16 buys nothing
    ("on", False, False, "mixed_bfloat16"),  # on a CPU, half precision is bfloat16 (float16 is emulated)
    ("on", True, True, "mixed_float16"),
    ("off", True, True, "float32"),
])
def test_precision_follows_the_hardware(flag, gpu, amx, policy):
    assert distribute.precision_policy(flag, gpu, amx) == policy


def test_amx_is_read_from_the_cpu_flags(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512_bf16 amx_bf16 amx_tile\n")
    assert distribute.cpu_has_amx(str(cpuinfo))
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512_bf16\nbugs\t\t: amx_bf16_fake\n")
    assert not distribute.cpu_has_amx(str(cpuinfo))  # avx512_bf16 alone is not AMX
    assert not distribute.cpu_has_amx(str(tmp_path / "missing"))  # no /proc (macOS): no AMX
