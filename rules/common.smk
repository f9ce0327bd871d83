# Helpers and constraints shared by all files in rules/

from storyreel.settings import video_settings
from storyreel.story import STORY_ID_PATTERN

STORIES = config["stories_dir"]


wildcard_constraints:
    # The story schema's id pattern, so no id can name a path outside the stories dir.
    story=STORY_ID_PATTERN.removeprefix("^").removesuffix("$"),
    shard=r"\d+",


def story_path(story, name):
    """A file of one story's directory: story_path("demo", "speech.wav")."""
    return f"{STORIES}/{story}/{name}"


def story_file(name):
    """A file of the story named by the {story} wildcard, in inputs and outputs."""
    return f"{STORIES}/{{story}}/{name}"


def step_log(step):
    return f"{STORIES}/{{story}}/logs/{step}.log"


def step_benchmark(step):
    return f"{STORIES}/{{story}}/benchmarks/{step}.tsv"


# The chosen output format (size, fps, layout) merged with the encoder settings.
VIDEO = video_settings(config)
SHARDS = list(range(config["render"]["shards"]))


def frame_shards(wildcards):
    """Every render shard's frame folder of the story, for the rules that read all frames."""
    return expand(story_file("frames/shard-{shard}"), story=wildcards.story, shard=SHARDS)
