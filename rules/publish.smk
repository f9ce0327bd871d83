# Publishing: the finished video, its captions and preview sheet, to durable storage.


rule publish:
    input:
        mp4=story_file("final.mp4"),
        vtt=story_file("captions.vtt"),
        preview=story_file("preview.png"),
    output:
        published=story_file("published.json"),
    params:
        # A param, not an output: a gs:// destination is no file Snakemake could track, and a
        # changed destination still reruns the step (Snakemake's params trigger).
        destination=publish_destination,
    log:
        step_log("publish"),
    benchmark:
        step_benchmark("publish")
    conda:
        # The intake environment already carries the storage client.
        "../envs/intake.yaml"
    container:
        image("intake")
    resources:
        container_image=image("intake"),
    script:
        "../scripts/publish.py"
