# Image family "speech-gpu": the tacotron2 backend (Tacotron 2 + WaveGlow on torch, CUDA).
# Installs exactly the pip list of envs/speech-gpu.yaml (the rules that run in this image name
# that file in their `conda:` directive).
#
# Build from the repository root after the base image (`make images` does both):
#   docker build -f containers/speech-gpu.Dockerfile --build-arg BASE_IMAGE=storyreel-base:dev \
#     -t storyreel-speech-gpu:dev .

ARG BASE_IMAGE=storyreel-base:dev
FROM ${BASE_IMAGE}

# Installing needs root; the image ends as the base's non-root user again.
USER 0
COPY envs/speech-gpu.yaml /opt/storyreel/envs/
RUN python /opt/storyreel/containers/requirements.py speech-gpu > /tmp/requirements.txt \
 && pip install --no-cache-dir --requirement /tmp/requirements.txt \
      --constraint /opt/storyreel/constraints.txt \
 && rm /tmp/requirements.txt

USER 10001:10001
