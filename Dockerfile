# syntax=docker/dockerfile:1
# Three images from one file, all tagged by git commit (never :latest) by `make image`:
#   --target cpu       python:3.11-slim + `.[cpu]` (tensorflow-cpu): preprocessing, scoring, small CPU training
#   --target gpu       the official TensorFlow GPU image (CUDA and cuDNN matched to TF) + our package and the
#                      non-TensorFlow pins; TensorFlow is not re-installed, so CUDA is not shipped twice.
#   --target dataflow  the cpu image plus Beam's SDK harness entrypoint: the --sdk_container_image of Dataflow
#                      workers (k8s/components/dataflow-scoring), with the same packages as the launcher.
# Every version comes from setup.py's PINS. cpu and gpu run as the numeric non-root user 10001 and write only to
# /tmp and /scratch (the Kubernetes manifests mount emptyDirs there under a read-only root filesystem).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG TF_GPU_IMAGE=tensorflow/tensorflow:2.21.0-gpu
# Beam's Python SDK image for the same Beam version (PINS["apache-beam"]) and Python minor version as PYTHON_IMAGE:
# only its /opt/apache/beam (the boot binary that starts a Dataflow worker's SDK harness) is used.
ARG BEAM_SDK_IMAGE=apache/beam_python3.11_sdk:2.77.0

# Reads PINS and OVERRIDES out of setup.py without running setuptools, one requirement per line:
# non-tf-pins.txt without TensorFlow (the cpu image gets it through the `cpu` extra, the gpu image from its base)
# and without the overrides, which overrides.txt holds: they go in last with --no-deps, over another package's cap.
FROM ${PYTHON_IMAGE} AS pins
WORKDIR /src
COPY setup.py .
RUN python - <<'PY'
import ast

tree = ast.parse(open("setup.py").read())
found = {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body
         if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") in ("PINS", "OVERRIDES")}
pins, overrides = found["PINS"], found["OVERRIDES"]
with open("non-tf-pins.txt", "w") as out:
    out.writelines(spec + "\n" for name, spec in sorted(pins.items())
                   if not name.startswith("tensorflow") and name not in overrides)
with open("overrides.txt", "w") as out:
    out.writelines(pins[name] + "\n" for name in sorted(overrides))
PY

FROM ${PYTHON_IMAGE} AS cpu
ARG CATSDOGS_CODE_VERSION=unknown
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CATSDOGS_CODE_VERSION=${CATSDOGS_CODE_VERSION} \
    HOME=/scratch \
    TMPDIR=/tmp \
    MPLCONFIGDIR=/scratch/matplotlib \
    KERAS_HOME=/scratch/keras
WORKDIR /app
COPY --from=pins /src/overrides.txt /tmp/overrides.txt
COPY setup.py pyproject.toml ./
COPY beam_pipelines ./beam_pipelines
COPY trainer ./trainer
# pip check runs before the overrides, which knowingly break one cap (setup.py says which and why).
# DL3013 wants `pkg==version`: `.[cpu]` is this repository, and everything it pulls is pinned in setup.py's PINS.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[cpu]" \
 && pip check \
 && pip install --no-cache-dir --no-deps -r /tmp/overrides.txt \
 && rm /tmp/overrides.txt \
 && groupadd --gid 10001 catsdogs \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /scratch --shell /usr/sbin/nologin catsdogs \
 && mkdir -p /scratch && chown 10001:10001 /scratch
USER 10001:10001
CMD ["catsdogs-score", "--help"]

# The same environment and user as the cpu stage: a stage FROM another base image inherits neither, and Dockerfile
# has no include, so the block is restated (tests/deploy/test_dockerfile.py checks the two stages agree).
FROM ${TF_GPU_IMAGE} AS gpu
ARG CATSDOGS_CODE_VERSION=unknown
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CATSDOGS_CODE_VERSION=${CATSDOGS_CODE_VERSION} \
    HOME=/scratch \
    TMPDIR=/tmp \
    MPLCONFIGDIR=/scratch/matplotlib \
    KERAS_HOME=/scratch/keras
WORKDIR /app
COPY --from=pins /src/non-tf-pins.txt /src/overrides.txt /tmp/
COPY setup.py pyproject.toml ./
COPY beam_pipelines ./beam_pipelines
COPY trainer ./trainer
# The requirements file holds the exact `==` pins from setup.py; `.` (this repository) goes in with --no-deps
# so pip cannot replace the base image's TensorFlow with a second CUDA build; the overrides go in last.
RUN python3 -m pip install --no-cache-dir -r /tmp/non-tf-pins.txt \
 && python3 -m pip install --no-cache-dir --no-deps . \
 && python3 -m pip install --no-cache-dir --no-deps -r /tmp/overrides.txt \
 && rm /tmp/non-tf-pins.txt /tmp/overrides.txt \
 && python3 -c "import tensorflow as tf, keras; print('tensorflow', tf.__version__, 'keras', keras.__version__)" \
 && groupadd --gid 10001 catsdogs \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /scratch --shell /usr/sbin/nologin catsdogs \
 && mkdir -p /scratch && chown 10001:10001 /scratch
USER 10001:10001
CMD ["catsdogs-train", "--help"]

FROM ${BEAM_SDK_IMAGE} AS beam-sdk

# A Dataflow custom container must start /opt/apache/beam/boot (Dataflow's "Build custom container images"); Beam's
# documented way to give another image one is to copy /opt/apache/beam from its SDK image. No --setup_file is
# staged: the package and the Pillow override (setup.py's OVERRIDES) are already installed here, whereas workers
# installing from setup.py would get Beam's capped Pillow.
FROM cpu AS dataflow
COPY --from=beam-sdk /opt/apache/beam /opt/apache/beam
# Dataflow mounts its worker directories (/var/opt/google) owned by root and the SDK harness writes there, so the
# harness runs as root (pangeo-data/pangeo-docker-images#360 hit this with a non-root image). This image never runs
# in the Kubernetes pods, which use the cpu image as UID 10001; hence DL3002 (last USER is root) is ignored here.
# hadolint ignore=DL3002
USER 0:0
ENTRYPOINT ["/opt/apache/beam/boot"]
