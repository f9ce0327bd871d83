# Rule tts: see storyreel.steps.synthesise_speech (snakemake is injected by Snakemake).
from storyreel.steps import run_from_snakemake, synthesise_speech

run_from_snakemake(snakemake, synthesise_speech)  # noqa: F821
