# Rule tts_mel: see storyreel.tacotron2.synthesis.synthesise_mel (snakemake is injected).
from storyreel.steps import run_from_snakemake
from storyreel.tacotron2.synthesis import synthesise_mel

run_from_snakemake(snakemake, synthesise_mel)  # noqa: F821
