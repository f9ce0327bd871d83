# Intake: the submitted story and its images, validated and normalised.


rule init_story:
    input:
        source=config["story_source"],
    output:
        story_json=story_file("story.json"),
        assets=directory(story_file("assets")),
    params:
        limits=config["limits"],
        assets_config=config["assets"],
    log:
        step_log("init_story"),
    benchmark:
        step_benchmark("init_story")
    conda:
        "../envs/intake.yaml"
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
    script:
        "../scripts/transcript.py"
