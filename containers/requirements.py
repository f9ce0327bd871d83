"""Print the pip requirements of one or more image families, read from envs/<family>.yaml.

envs/<family>.yaml is the one list of what a family's container carries (each rule's `conda:`
directive points at it), so the container builds run this script instead of keeping a second
copy of the list:

    python containers/requirements.py face video > requirements.txt

Several families are merged (the video image also carries the face family's packages); a
package pinned differently by two of them is an error, as is an unpinned one or a conda-only
package, which a pip-based image would silently lack. The script also refuses to run under a
Python other than the one the environment names, so an image built on the wrong interpreter
fails at build time rather than at the first job.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

ENVS = Path(__file__).resolve().parent.parent / "envs"
FAMILY = re.compile(r"^[a-z0-9][a-z0-9-]*$")
NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
# Conda entries that a pip-only image satisfies by itself (its interpreter and pip).
CONDA_PROVIDED = {"python", "pip"}


def families(envs: Path = ENVS) -> list[str]:
    """Every image family: one per envs/*.yaml."""
    return sorted(path.stem for path in envs.glob("*.yaml"))


def canonical_name(requirement: str) -> str:
    """The normalised distribution name of a requirement line (PEP 503)."""
    match = NAME.match(requirement)
    if not match:
        raise ValueError(f"cannot read a package name from {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def read_env(family: str, envs: Path = ENVS) -> tuple[str | None, list[str]]:
    """The Python version (e.g. "3.11", or None) and the pip list of one family."""
    if not FAMILY.match(family):
        raise ValueError(f"not a family name: {family!r}")
    path = envs / f"{family}.yaml"
    if not path.is_file():
        raise ValueError(f"no environment for family {family!r} ({path}); known: {families(envs)}")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    python, pip = None, []
    for entry in data.get("dependencies") or []:
        if isinstance(entry, dict) and set(entry) == {"pip"}:
            pip.extend(str(item).strip() for item in entry["pip"] or [])
        elif isinstance(entry, str):
            name, _, version = entry.partition("=")
            name = name.strip()
            if name not in CONDA_PROVIDED:
                raise ValueError(
                    f"{path.name}: conda package {entry!r} has no place in a pip image"
                )
            if name == "python" and version:
                python = version.lstrip("=").strip()
        else:
            raise ValueError(f"{path.name}: unexpected dependency entry {entry!r}")
    return python, pip


def requirements(selected: list[str], envs: Path = ENVS) -> list[str]:
    """The merged, pinned pip list of the selected families, in first-seen order."""
    merged: dict[str, str] = {}
    for family in selected:
        for requirement in read_env(family, envs)[1]:
            if "==" not in requirement:
                raise ValueError(f"envs/{family}.yaml: {requirement!r} is not pinned with ==")
            name = canonical_name(requirement)
            spec = re.sub(r"\s+", "", requirement)
            if name in merged and merged[name] != spec:
                raise ValueError(
                    f"envs/{family}.yaml: {requirement!r} conflicts with {merged[name]!r}"
                )
            merged.setdefault(name, spec)
    return list(merged.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("families", nargs="+", metavar="FAMILY")
    parser.add_argument("--envs", type=Path, default=ENVS, help="directory of <family>.yaml")
    args = parser.parse_args(argv)
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    try:
        for family in args.families:
            wanted = read_env(family, args.envs)[0]
            if wanted and wanted != running:
                raise ValueError(f"envs/{family}.yaml wants Python {wanted}, this is {running}")
        lines = requirements(args.families, args.envs)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
