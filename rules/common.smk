# Helpers and constraints shared by all files in rules/

from storyreel.settings import video_settings
from storyreel.storage import is_gcs_uri
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


def for_story(template, story):
    """A configured template (a path or gs:// URI) with its {story} filled in. Not str.format:
    the story id is the only placeholder, and any other braces in a path stay as they are."""
    return template.replace("{story}", story)


def story_source(wildcards):
    """Where init_story reads the story: a local path or a gs:// URI."""
    return for_story(config["story_source"], wildcards.story)


def local_story_file(wildcards):
    """The story file as an input, so that editing it reruns init_story; none for gs://."""
    source = story_source(wildcards)
    return [] if is_gcs_uri(source) else source


def publish_destination(wildcards):
    """storage.publish_prefix (gs://) for the story, or the local storage.publish_dir."""
    publishing = config["storage"]  # not `storage`: that is a Snakemake keyword
    return for_story(publishing["publish_prefix"] or publishing["publish_dir"], wildcards.story)


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
