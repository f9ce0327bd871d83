# Rule phonemes: see storyreel.steps.make_phonemes (snakemake is injected by Snakemake).
from storyreel.steps import make_phonemes, run_from_snakemake

run_from_snakemake(snakemake, make_phonemes)  # noqa: F821
