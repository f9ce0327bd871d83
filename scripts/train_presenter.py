# Rule train_presenter: see storyreel.pix2pixhd.train.train_presenter (snakemake is injected).
from storyreel.pix2pixhd.train import train_presenter
from storyreel.steps import run_from_snakemake

run_from_snakemake(snakemake, train_presenter)  # noqa: F821
