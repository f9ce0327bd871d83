# The video: composition with ffmpeg, captions, and a preview sheet for a person to check.


rule compose:
    input:
        story_json=story_file("story.json"),
        assets=story_file("assets"),
        frames=frame_shards,
        wav=story_file("speech.wav"),
        phonemes=story_file("phonemes.json"),
        transcript=story_file("transcript.json"),
    output:
        mp4=story_file("final.mp4"),
        vtt=story_file("captions.vtt"),
    params:
        video=VIDEO,
    log:
        step_log("compose"),
    benchmark:
        step_benchmark("compose")
    conda:
        "../envs/video.yaml"
    container:
        image(VIDEO_FAMILY)
    group:
        VIDEO_GROUP
    resources:
        container_image=image(VIDEO_FAMILY),
        # All frames, the news images and the video at once: the group pod's whole disk.
        disk_mb=VIDEO_GROUP_DISK_MB,
    script:
        "../scripts/compose.py"


rule preview:
    input:
        frames=frame_shards,
        wav=story_file("speech.wav"),
        phonemes=story_file("phonemes.json"),
        visemes=story_file("landmarks/visemes.json"),
        frames_npz=story_file("landmarks/frames.npz"),
    output:
        preview=story_file("preview.png"),
    params:
        fps=VIDEO["fps"],
    log:
        step_log("preview"),
    benchmark:
        step_benchmark("preview")
    conda:
        "../envs/video.yaml"
    container:
        image(VIDEO_FAMILY)
    group:
        VIDEO_GROUP
    resources:
        container_image=image(VIDEO_FAMILY),
    script:
        "../scripts/preview.py"
