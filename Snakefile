# storyreel: a news story becomes a presenter video, one file target per step.
# The rules live in rules/*.smk; the step logic in the storyreel package.

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config.yaml"


validate(config, "schemas/config.schema.yaml")


include: "rules/common.smk"
include: "rules/intake.smk"
include: "rules/speech.smk"
include: "rules/timing.smk"
include: "rules/presenter.smk"
include: "rules/video.smk"
include: "rules/publish.smk"
include: "rules/training.smk"


rule all:
    default_target: True
    input:
        story_path(config.get("default_story", "demo"), "final.mp4"),
        story_path(config.get("default_story", "demo"), "preview.png"),
