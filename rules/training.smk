# Presenter training: a pix2pixHD generator learns one presenter from the newsroom's video of
# them. Not part of any story's graph (rule all never asks for it); ask for it by name:
#   snakemake --cores all models/astronaut/latest_net_G.pth
# A stopped or failed run resumes from models/{presenter}/training/state.pt, which is not an
# output, so Snakemake never deletes it; delete that folder to start over.

import re

TRAINING = config.get("training") or {}
MODELS = TRAINING.get("models_dir", "models")
# Only training.presenter can be trained (its video is training.video): asking for another
# presenter's model finds no rule; the step checks the name again.
TRAINED_PRESENTER = re.escape(TRAINING.get("presenter") or "(training.presenter not set)")


rule train_presenter:
    input:
        # Unset, the missing input names the key to set.
        video=TRAINING.get("video") or "training.video (not set in the config)",
    output:
        checkpoint=f"{MODELS}/{{presenter}}/latest_net_G.pth",
        summary=f"{MODELS}/{{presenter}}/training.json",
    params:
        training=TRAINING,
        ffmpeg=config["video"].get("ffmpeg", "bundled"),
    wildcard_constraints:
        presenter=TRAINED_PRESENTER,
    log:
        f"{MODELS}/{{presenter}}/logs/train_presenter.log",
    benchmark:
        f"{MODELS}/{{presenter}}/benchmarks/train_presenter.tsv"
    conda:
        "../envs/video-gpu.yaml"
    container:
        # The pix2pixHD render image: torch (CUDA), dlib and its 68-point model, OpenCV and
        # ffmpeg, all that training needs.
        image("video-gpu")
    resources:
        container_image=image("video-gpu"),
        gpu=1,
        gpu_manufacturer="nvidia",
        gpu_model=TRAINING.get("gpu_model", "nvidia-l4"),
    script:
        "../scripts/train_presenter.py"
