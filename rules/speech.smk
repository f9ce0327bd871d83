# Speech: the normalised transcript read aloud.
#
# tts.backend piper or espeak: rule tts, one CPU job. tts.backend tacotron2: rule tts_mel
# (Tacotron 2, transcript -> mel spectrograms) then rule vocoder (WaveGlow, mel spectrograms ->
# speech.wav + speech.json), both GPU jobs; the files downstream are the same.


if config["tts"]["backend"] == "tacotron2":
    TACOTRON2 = config["tts"].get("tacotron2") or {}

    rule tts_mel:
        input:
            transcript=story_file("transcript.json"),
        output:
            mel=story_file("mel.npy"),
            mel_json=story_file("mel.json"),
        params:
            tts=config["tts"],
        log:
            step_log("tts_mel"),
        benchmark:
            step_benchmark("tts_mel")
        conda:
            "../envs/speech-gpu.yaml"
        container:
            image("speech-gpu")
        resources:
            container_image=image("speech-gpu"),
            gpu=1,
            gpu_manufacturer="nvidia",
            gpu_model=TACOTRON2.get("gpu_model", "nvidia-l4"),
        script:
            "../scripts/tts_mel.py"

    rule vocoder:
        input:
            mel=story_file("mel.npy"),
            mel_json=story_file("mel.json"),
        output:
            wav=story_file("speech.wav"),
            speech=story_file("speech.json"),
        params:
            tts=config["tts"],
        log:
            step_log("vocoder"),
        benchmark:
            step_benchmark("vocoder")
        conda:
            "../envs/speech-gpu.yaml"
        container:
            image("speech-gpu")
        resources:
            container_image=image("speech-gpu"),
            gpu=1,
            gpu_manufacturer="nvidia",
            gpu_model=TACOTRON2.get("gpu_model", "nvidia-l4"),
        script:
            "../scripts/vocoder.py"

else:

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
