# Rule animate: see storyreel.steps.animate_presenter (snakemake is injected by Snakemake).
from storyreel.steps import animate_presenter, run_from_snakemake

run_from_snakemake(snakemake, animate_presenter)  # noqa: F821
