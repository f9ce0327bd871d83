# Rule init_story: see storyreel.steps.init_story (snakemake is injected by Snakemake).
from storyreel.steps import init_story, run_from_snakemake

run_from_snakemake(snakemake, init_story)  # noqa: F821
