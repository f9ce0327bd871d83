# Image family "face": presenter landmarks, animation and the mesh-warp renderer.
# Installs exactly the pip list of envs/face.yaml (the rules that run in this image name that
# file in their `conda:` directive).
#
# Build from the repository root after the base image (`make images` does both):
#   docker build -f containers/face.Dockerfile --build-arg BASE_IMAGE=storyreel-base:dev \
#     -t storyreel-face:dev .

ARG BASE_IMAGE=storyreel-base:dev
FROM ${BASE_IMAGE}

# Installing needs root; the image ends as the base's non-root user again.
USER 0
COPY envs/face.yaml /opt/storyreel/envs/
RUN python /opt/storyreel/containers/requirements.py face > /tmp/requirements.txt \
 && pip install --no-cache-dir --requirement /tmp/requirements.txt \
      --constraint /opt/storyreel/constraints.txt \
 && rm /tmp/requirements.txt

USER 10001:10001
