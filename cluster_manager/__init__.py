"""The watcher daemon: turns submitted stories into Snakemake runs and sizes the cluster."""
