"""Benchmark of the audio half: story -> transcript -> speech -> alignment -> phonemes.

Each step runs in a fresh interpreter (as a Snakemake job does) and reports its import time,
its work time and the process's peak memory. Interpreter start-up is not counted.

    .venv/bin/python bench/audio.py            # the demo story (~35 s of speech) and a 9x story
    .venv/bin/python bench/audio.py --only short
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
STEPS = ["init_story", "transcript", "tts", "align", "phonemes"]


def step_call(step: str, work: Path, config: dict) -> None:
    """Run one step on the story in ``work`` (in this process)."""
    from storyreel import steps

    out = work / "stories" / "bench"
    files = {
        name: str(out / name)
        for name in (
            "story.json",
            "transcript.json",
            "speech.wav",
            "speech.json",
            "alignment.json",
            "phonemes.json",
        )
    }
    if step == "init_story":
        steps.init_story(
            source=str(work / "bench.json"),
            story_json=files["story.json"],
            assets=str(out / "assets"),
            story="bench",
            limits=config["limits"],
            assets_config=config["assets"],
        )
    elif step == "transcript":
        steps.make_transcript(story_json=files["story.json"], transcript=files["transcript.json"])
    elif step == "tts":
        steps.synthesise_speech(
            story_json=files["story.json"],
            transcript=files["transcript.json"],
            wav=files["speech.wav"],
            speech=files["speech.json"],
            tts=config["tts"],
        )
    elif step == "align":
        steps.align_speech(
            wav=files["speech.wav"],
            transcript=files["transcript.json"],
            speech=files["speech.json"],
            alignment=files["alignment.json"],
            align=config["align"],
        )
    elif step == "phonemes":
        steps.make_phonemes(
            alignment=files["alignment.json"],
            transcript=files["transcript.json"],
            speech=files["speech.json"],
            phonemes=files["phonemes.json"],
            story="bench",
        )


STEP_MODULES = {
    "init_story": ["storyreel.steps", "storyreel.images"],
    "transcript": ["storyreel.steps", "storyreel.textnorm"],
    "tts": ["storyreel.steps", "storyreel.tts"],
    "align": ["storyreel.steps", "storyreel.align"],
    "phonemes": ["storyreel.steps", "storyreel.phonemes"],
}


def child(step: str, work: Path) -> None:
    """Entry point of the per-step interpreter: import, run, report JSON on stdout."""
    import importlib
    import logging

    logging.disable(logging.INFO)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    started = time.perf_counter()
    for module in STEP_MODULES[step]:
        importlib.import_module(module)
    imported = time.perf_counter()
    step_call(step, work, config)
    done = time.perf_counter()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps({"import_s": imported - started, "work_s": done - imported, "peak_mb": peak_mb})
    )


def make_story(work: Path, repeat: int) -> None:
    demo = json.loads((REPO / "examples" / "stories" / "demo.json").read_text())
    demo["id"] = "bench"
    demo["text"] = "\n\n".join([demo["text"]] * repeat)
    demo["images"] = [
        {"uri": f"package://skimage/data/{name}"}
        for name in ("rocket.jpg", "hubble_deep_field.jpg")
    ]
    (work / "bench.json").write_text(json.dumps(demo))


def run_story(label: str, repeat: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="storyreel-bench-") as tmp:
        work = Path(tmp)
        make_story(work, repeat)
        rows = {}
        for step in STEPS:
            out = subprocess.run(
                [sys.executable, __file__, "--child", step, "--work", str(work)],
                check=True,
                capture_output=True,
                text=True,
            )
            rows[step] = json.loads(out.stdout.strip().splitlines()[-1])
        speech = json.loads((work / "stories/bench/speech.json").read_text())
        words = sum(len(s["words"]) for s in speech["sentences"])
    return {"label": label, "audio_s": speech["duration"], "words": words, "steps": rows}


def print_table(result: dict) -> None:
    audio = result["audio_s"]
    print(f"\n{result['label']}: {result['words']} words, {audio:.1f} s of speech")
    print(f"{'step':<11} {'import s':>9} {'work s':>8} {'x audio':>8} {'peak MB':>8}")
    total_work = 0.0
    for step, row in result["steps"].items():
        total_work += row["work_s"]
        print(
            f"{step:<11} {row['import_s']:9.2f} {row['work_s']:8.2f} "
            f"{row['work_s'] / audio:8.3f} {row['peak_mb']:8.0f}"
        )
    peak = max(row["peak_mb"] for row in result["steps"].values())
    total_import = sum(row["import_s"] for row in result["steps"].values())
    print(
        f"{'total':<11} {total_import:9.2f} {total_work:8.2f} {total_work / audio:8.3f} {peak:8.0f}"
    )
    result["total_work_s"] = total_work


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["short", "long"])
    parser.add_argument("--child", choices=STEPS, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.work)
        return
    print(
        f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, "
        f"{len(__import__('os').sched_getaffinity(0))} cores, Python {platform.python_version()}"
    )
    results = []
    for label, repeat in (("short (demo story)", 1), ("long (demo story x 9)", 9)):
        if args.only and not label.startswith(args.only):
            continue
        result = run_story(label, repeat)
        print_table(result)
        results.append(result)
    if len(results) == 2:
        short, long = results
        print(
            f"\nscaling: {long['audio_s'] / short['audio_s']:.1f}x the audio costs "
            f"{long['total_work_s'] / short['total_work_s']:.1f}x the work"
        )


if __name__ == "__main__":
    main()
