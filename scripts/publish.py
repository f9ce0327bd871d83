# Rule publish: see storyreel.steps.publish_story (snakemake is injected by Snakemake).
from storyreel.steps import publish_story, run_from_snakemake

run_from_snakemake(snakemake, publish_story)  # noqa: F821
