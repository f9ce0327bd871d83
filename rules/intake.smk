# Intake: the submitted story and its images, validated and normalised.


# A story in GCS is downloaded by the step itself, not declared as an input. Snakemake's
# storage() (snakemake-storage-plugin-gcs) would ask GCS for the object's existence and mtime
# while it builds the DAG, so even `snakemake -n` would need credentials and
# --storage-gcs-project, every job image would carry the plugin, and the download would bypass
# storage.max_object_bytes and the story's own error messages. The source is a param for every
# story: changing story_source reruns the step (Snakemake's params trigger); a story object
# replaced in GCS does not (ask for that with --forcerun init_story).
rule init_story:
    input:
        local_story_file,
    output:
        story_json=story_file("story.json"),
        assets=directory(story_file("assets")),
    params:
        source=story_source,
        limits=config["limits"],
        assets_config=config["assets"],
        allowed_image_prefixes=config["storage"]["allowed_image_prefixes"],
        max_object_bytes=config["storage"]["max_object_bytes"],
    log:
        step_log("init_story"),
    benchmark:
        step_benchmark("init_story")
    conda:
        "../envs/intake.yaml"
    container:
        image("intake")
    resources:
        container_image=image("intake"),
    script:
        "../scripts/init_story.py"


rule transcript:
    input:
        story_json=story_file("story.json"),
    output:
        transcript=story_file("transcript.json"),
    log:
        step_log("transcript"),
    benchmark:
        step_benchmark("transcript")
    conda:
        "../envs/intake.yaml"
    container:
        image("intake")
    resources:
        container_image=image("intake"),
    script:
        "../scripts/transcript.py"
