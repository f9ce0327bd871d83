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
    script:
        "../scripts/animate.py"


rule render:
    input:
        presenter_png=story_file("landmarks/presenter.png"),
        reference=story_file("landmarks/reference.json"),
        frames_npz=story_file("landmarks/frames.npz"),
    output:
        frames=directory(story_file("frames/shard-{shard}")),
    params:
        render=config["render"],
    log:
        f"{STORIES}/{{story}}/logs/render-{{shard}}.log",
    benchmark:
        f"{STORIES}/{{story}}/benchmarks/render-{{shard}}.tsv"
    conda:
        "../envs/face.yaml"
    script:
        "../scripts/render.py"
