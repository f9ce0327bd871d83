# Image family "video-gpu": the video group with the pix2pixhd render backend (torch, CUDA).
# Installs exactly the pip lists of envs/face.yaml, envs/video.yaml and envs/video-gpu.yaml:
# render, compose and preview share one pod (one image), as in the "video" family, which this
# image extends with torch.
#
# Build from the repository root after the base image (`make images` does both):
#   docker build -f containers/video-gpu.Dockerfile --build-arg BASE_IMAGE=storyreel-base:dev \
#     -t storyreel-video-gpu:dev .

ARG BASE_IMAGE=storyreel-base:dev
FROM ${BASE_IMAGE}

# Installing needs root; the image ends as the base's non-root user again.
USER 0
COPY envs/face.yaml envs/video.yaml envs/video-gpu.yaml /opt/storyreel/envs/
RUN python /opt/storyreel/containers/requirements.py face video video-gpu \
      > /tmp/requirements.txt \
 && pip install --no-cache-dir --requirement /tmp/requirements.txt \
      --constraint /opt/storyreel/constraints.txt \
 && rm /tmp/requirements.txt

USER 10001:10001
