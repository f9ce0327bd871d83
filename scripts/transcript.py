# Rule transcript: see storyreel.steps.make_transcript (snakemake is injected by Snakemake).
from storyreel.steps import make_transcript, run_from_snakemake

run_from_snakemake(snakemake, make_transcript)  # noqa: F821
