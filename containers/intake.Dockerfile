# Image family "intake": story validation, image and text normalisation, and the GCS client.
# Installs exactly the pip list of envs/intake.yaml (the rules that run in this image name that
# file in their `conda:` directive).
#
# Build from the repository root after the base image (`make images` does both):
#   docker build -f containers/intake.Dockerfile --build-arg BASE_IMAGE=storyreel-base:dev \
#     -t storyreel-intake:dev .

ARG BASE_IMAGE=storyreel-base:dev
FROM ${BASE_IMAGE}

# Installing needs root; the image ends as the base's non-root user again.
USER 0
COPY envs/intake.yaml /opt/storyreel/envs/
RUN python /opt/storyreel/containers/requirements.py intake > /tmp/requirements.txt \
 && pip install --no-cache-dir --requirement /tmp/requirements.txt \
      --constraint /opt/storyreel/constraints.txt \
 && rm /tmp/requirements.txt

USER 10001:10001
