# Rule landmarks: see storyreel.steps.presenter_landmarks (snakemake is injected by Snakemake).
from storyreel.steps import presenter_landmarks, run_from_snakemake

run_from_snakemake(snakemake, presenter_landmarks)  # noqa: F821
