# Rule render: see storyreel.steps.render_presenter (snakemake is injected by Snakemake).
from storyreel.steps import render_presenter, run_from_snakemake

run_from_snakemake(snakemake, render_presenter)  # noqa: F821
