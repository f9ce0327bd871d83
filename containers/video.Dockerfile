# Image family "video": composition, captions and the preview sheet.
# Installs exactly the pip lists of envs/video.yaml and envs/face.yaml (the rules that run in
# this image name envs/video.yaml in their `conda:` directive).
# It also carries the face family's packages, on purpose: render and compose may share one pod
# (a Snakemake `group:` runs all its jobs in one image), so this image must run render too. The
# two lists overlap heavily (numpy, opencv, pillow, tqdm), so the extra weight is small, and
# requirements.py refuses the merge if the two environments ever pin a package differently.
#
# Build from the repository root after the base image (`make images` does both):
#   docker build -f containers/video.Dockerfile --build-arg BASE_IMAGE=storyreel-base:dev \
#     -t storyreel-video:dev .

ARG BASE_IMAGE=storyreel-base:dev
FROM ${BASE_IMAGE}

# Installing needs root; the image ends as the base's non-root user again.
USER 0
COPY envs/face.yaml envs/video.yaml /opt/storyreel/envs/
RUN python /opt/storyreel/containers/requirements.py face video > /tmp/requirements.txt \
 && pip install --no-cache-dir --requirement /tmp/requirements.txt \
      --constraint /opt/storyreel/constraints.txt \
 && rm /tmp/requirements.txt

USER 10001:10001
