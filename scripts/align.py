# Rule align: see storyreel.steps.align_speech (snakemake is injected by Snakemake).
from storyreel.steps import align_speech, run_from_snakemake

run_from_snakemake(snakemake, align_speech)  # noqa: F821
