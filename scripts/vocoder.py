# Rule vocoder: see storyreel.tacotron2.synthesis.vocode (snakemake is injected by Snakemake).
from storyreel.steps import run_from_snakemake
from storyreel.tacotron2.synthesis import vocode

run_from_snakemake(snakemake, vocode)  # noqa: F821
