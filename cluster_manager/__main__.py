"""``python -m cluster_manager``: the same commands as ``storyreel-watcher``."""

import sys

from cluster_manager.cli import main

sys.exit(main())
