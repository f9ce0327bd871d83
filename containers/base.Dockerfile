# storyreel base image: Python 3.11, the pinned Snakemake, the storyreel package and, once it
# exists, the project's executor plugin. Every family image is built FROM this one, so every job
# container has python, pip and the very Snakemake version of the main process (each job runs
# `python -m snakemake ...` inside its rule's image).
#
# Build from the repository root (`make images` does this):
#   docker build -f containers/base.Dockerfile -t storyreel-base:dev .

# Patch-pinned, on Debian 12: the release the pinned wheels were checked on. For byte-for-byte
# rebuilds pass a digest: --build-arg PYTHON_IMAGE=python:3.11.17-slim-bookworm@sha256:...
ARG PYTHON_IMAGE=python:3.11.17-slim-bookworm
FROM ${PYTHON_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# A fixed numeric uid/gid: Kubernetes can check runAsNonRoot only against a numeric USER, and a
# pod's fsGroup 10001 makes the story volume writable for it.
RUN groupadd --gid 10001 storyreel \
 && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin storyreel

WORKDIR /opt/storyreel

# The project's full pin set, and the script that turns envs/<family>.yaml into a pip list:
# the family images use both, so every image resolves from the same pins.
COPY constraints.txt ./
COPY containers/requirements.py containers/

RUN pip install "pip==25.3" \
 && pip install --constraint constraints.txt "snakemake==9.27.1"

# storyreel itself without its dependencies: pyproject.toml lists the whole embedded default
# (every family's packages at once); each family image adds only its own envs/<family>.yaml.
# pip's note in the family builds that storyreel "requires" the other families' packages is
# expected for that reason.
COPY pyproject.toml README.md src/
COPY storyreel/ src/storyreel/
RUN pip install --no-deps ./src \
 && rm -rf src

# The executor plugin will live in plugins/<name>/. `plugin[s]` is a glob, so the build also
# passes while that folder does not exist; README.md rides along only because Docker's classic
# builder and podman reject a COPY whose sources all match nothing.
COPY README.md plugin[s] plugins/
RUN for plugin in plugins/*/; do \
      if [ -f "${plugin}pyproject.toml" ] || [ -f "${plugin}setup.py" ]; then \
        pip install --constraint constraints.txt "${plugin}" || exit 1; \
      fi; \
    done \
 && rm -rf plugins \
 && python -m snakemake --version

USER 10001:10001
WORKDIR /home/storyreel
