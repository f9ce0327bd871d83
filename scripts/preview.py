# Rule preview: see storyreel.steps.preview_sheet (snakemake is injected by Snakemake).
from storyreel.steps import preview_sheet, run_from_snakemake

run_from_snakemake(snakemake, preview_sheet)  # noqa: F821
