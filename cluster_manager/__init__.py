"""The watcher daemon: turns submitted stories into Snakemake runs and sizes the cluster."""

import os

# The watcher forks a Snakemake process per story while the Pub/Sub and GKE clients' gRPC
# threads run; gRPC's fork handlers then abort some of those children (SIGABRT). The switch is
# read when grpc is first imported, so it is set here, before any client module loads.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
