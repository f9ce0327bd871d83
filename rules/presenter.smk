# The presenter: reference landmarks, per-frame animation, rendered frames.


rule landmarks:
    input:
        story_json=story_file("story.json"),
    output:
        presenter_png=story_file("landmarks/presenter.png"),
        reference=story_file("landmarks/reference.json"),
    params:
        presenter=config["presenter"],
    log:
        step_log("landmarks"),
    benchmark:
        step_benchmark("landmarks")
    conda:
        "../envs/face.yaml"
    container:
        image("face")
    resources:
        container_image=image("face"),
    script:
        "../scripts/landmarks.py"


rule animate:
    input:
        story_json=story_file("story.json"),
        phonemes=story_file("phonemes.json"),
        wav=story_file("speech.wav"),
        reference=story_file("landmarks/reference.json"),
    output:
        frames_npz=story_file("landmarks/frames.npz"),
        visemes=story_file("landmarks/visemes.json"),
    params:
        fps=VIDEO["fps"],
        animate=config["animate"],
    log:
        step_log("animate"),
    benchmark:
        step_benchmark("animate")
    conda:
        "../envs/face.yaml"
    container:
        image("face")
    resources:
        container_image=image("face"),
    script:
        "../scripts/animate.py"


rule render:
    input:
        presenter_png=story_file("landmarks/presenter.png"),
        reference=story_file("landmarks/reference.json"),
        frames_npz=story_file("landmarks/frames.npz"),
    output:
        # Bulky (hundreds of MB per story) and read only by compose and preview: temporary, and
        # with group_jobs local to the node, so on a cluster render, compose and preview share
        # one pod and the frames never go through storage.
        frames=temp(directory(story_file("frames/shard-{shard}")), group_jobs=True),
    params:
        render=config["render"],
    log:
        f"{STORIES}/{{story}}/logs/render-{{shard}}.log",
    benchmark:
        f"{STORIES}/{{story}}/benchmarks/render-{{shard}}.tsv"
    conda:
        RENDER_ENV
    container:
        # The group's image: the video image also carries the face packages render needs.
        image(VIDEO_FAMILY)
    group:
        VIDEO_GROUP
    resources:
        container_image=image(VIDEO_FAMILY),
        # The shards run side by side: together they may fill the group's disk.
        disk_mb=VIDEO_GROUP_DISK_MB // len(SHARDS),
        **RENDER_GPU,
    script:
        "../scripts/render.py"
