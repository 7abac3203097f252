"""The trainer says which devices it trains on, and warns loudly when the machine has NVIDIA GPUs that TensorFlow
does not see (a CPU-only TensorFlow on a GPU node). No GPU here: a stand-in `nvidia-smi` on PATH lists one."""

import logging
import os
import stat

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


def test_a_gpu_listed_by_nvidia_smi_but_invisible_to_tensorflow_is_a_loud_warning(tmp_path, monkeypatch, caplog):
    stand_in_nvidia_smi(tmp_path / "bin", monkeypatch)
    assert distribute.nvidia_gpus() == ["GPU 0: NVIDIA L4 (UUID: GPU-00000000-1111-2222-3333-444444444444)"]
    monkeypatch.setattr(logging.getLogger(logger.NAME), "propagate", True)  # let caplog see it
    with caplog.at_level(logging.WARNING, logger=logger.NAME):
        placement = distribute.choose("auto")  # this TensorFlow sees no GPU
    assert placement.devices and not placement.mixed_precision
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
