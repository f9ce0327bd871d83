# Rule compose: see storyreel.steps.compose_video (snakemake is injected by Snakemake).
from storyreel.steps import compose_video, run_from_snakemake

run_from_snakemake(snakemake, compose_video)  # noqa: F821
