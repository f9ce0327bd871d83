# Timing: where each word and phone lies in the speech.


rule align:
    input:
        wav=story_file("speech.wav"),
        transcript=story_file("transcript.json"),
        speech=story_file("speech.json"),
    output:
        alignment=story_file("alignment.json"),
    params:
        align=config["align"],
    log:
        step_log("align"),
    benchmark:
        step_benchmark("align")
    conda:
        "../envs/timing.yaml"
    container:
        image("timing")
    resources:
        container_image=image("timing"),
    script:
        "../scripts/align.py"


rule phonemes:
    input:
        alignment=story_file("alignment.json"),
        transcript=story_file("transcript.json"),
        speech=story_file("speech.json"),
    output:
        phonemes=story_file("phonemes.json"),
    log:
        step_log("phonemes"),
    benchmark:
        step_benchmark("phonemes")
    conda:
        "../envs/timing.yaml"
    container:
        image("timing")
    resources:
        container_image=image("timing"),
    script:
        "../scripts/phonemes.py"
