"""What each rule of the workflow asks of GKE: its pod (the rule, or its group), image and
resources, as the storyreel executor turns them into a Kubernetes Job.

Reads the workflow only: no cluster, no GCS, no credentials (Snakemake's own dry run with the
GKE profile reads the work bucket to know what is already done, and does not show images).

    python deploy/gke/plan.py [--configfile MINE.yaml ...]      (make gke-plan)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

REPO = Path(__file__).resolve().parents[2]
# Resources that become part of the pod (see the executor plugin's README).
POD_RESOURCES = ("_cores", "mem_mb", "disk_mb", "gpu", "gpu_model", "gpu_manufacturer")


def describe(value) -> str:
    return "(computed per job)" if callable(value) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configfile", nargs="*", default=[], type=Path)
    args = parser.parse_args()

    configfiles = [REPO / "config.yaml", *args.configfile]
    with SnakemakeApi(OutputSettings()) as api:
        workflow_api = api.workflow(
            resource_settings=ResourceSettings(),
            config_settings=ConfigSettings(configfiles=configfiles),
            snakefile=REPO / "Snakefile",
            workdir=REPO,
        )
        rules = [rule for rule in workflow_api._workflow.rules if rule.container_img]
        print(f"{'rule':<12} {'pod':<12} {'image':<60} resources")
        for rule in rules:
            # Rule.group reads as None outside a cluster run; _group is what `group:` set.
            pod = f"group {rule._group}" if rule._group else rule.name
            resources = ", ".join(
                f"{name.lstrip('_')}={describe(rule.resources[name].value)}"
                for name in POD_RESOURCES
                if name in rule.resources
            )
            print(f"{rule.name:<12} {pod:<12} {rule.container_img:<60} {resources}")


if __name__ == "__main__":
    main()
