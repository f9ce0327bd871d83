# Speech: the normalised transcript read aloud.


rule tts:
    input:
        story_json=story_file("story.json"),
        transcript=story_file("transcript.json"),
    output:
        wav=story_file("speech.wav"),
        speech=story_file("speech.json"),
    params:
        tts=config["tts"],
    log:
        step_log("tts"),
    benchmark:
        step_benchmark("tts")
    conda:
        "../envs/speech.yaml"
    container:
        image("speech")
    resources:
        container_image=image("speech"),
    script:
        "../scripts/tts.py"
