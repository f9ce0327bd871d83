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
# Render shards run side by side on the CPU cores. A GPU render is one shard: the pod has one
# GPU, which the batched generator keeps busy on its own (shards would only contend for it).
SHARDS = list(range(1 if config["render"]["backend"] == "pix2pixhd" else config["render"]["shards"]))


def image(family):
    """The container image of an image family (containers/<family>.Dockerfile, one per
    envs/<family>.yaml), as `make images` tags it. Named twice in every step: as its container
    (for --software-deployment-method apptainer; local runs otherwise use the installed
    packages) and as resource container_image, which the storyreel executor gives the step's
    pod and which a dry run lists (Snakemake shows a job's resources, not its container)."""
    images = config["containers"]
    return f"{images['registry']}/storyreel-{family}:{images['tag']}"


# render, compose and preview of a story run together, on a cluster in one pod (one Kubernetes
# Job, the image family "video"): the frames stay on that pod's disk.
VIDEO_GROUP = "video"
# With render.backend pix2pixhd, render runs a generator on a GPU: the group's pod then asks for
# one, and all three steps run in the image family that adds torch to "video".
RENDER_ON_GPU = config["render"]["backend"] == "pix2pixhd"
VIDEO_FAMILY = "video-gpu" if RENDER_ON_GPU else "video"
RENDER_ENV = "../envs/video-gpu.yaml" if RENDER_ON_GPU else "../envs/face.yaml"
RENDER_GPU = (
    {
        "gpu": 1,
        "gpu_manufacturer": "nvidia",
        "gpu_model": config["render"]["pix2pixhd"]["gpu_model"],
    }
    if RENDER_ON_GPU
    else {}
)
# The disk (resource disk_mb, the pod's ephemeral-storage request) of that group. A group asks
# for the most that any of its steps asks for, summed over steps running side by side.
VIDEO_GROUP_DISK_MB = config["containers"]["video_disk_mb"]


def frame_shards(wildcards):
    """Every render shard's frame folder of the story, for the rules that read all frames."""
    return expand(story_file("frames/shard-{shard}"), story=wildcards.story, shard=SHARDS)
