"""Benchmark of the visual half: landmarks -> animate -> render (sharded) -> compose.

Runs the real workflow on the demo story (~35 s of speech) with Snakemake, once per output
setting, and reads each job's wall time and peak memory from the rules' benchmark files.

    .venv/bin/python bench/video.py                       # demo setting and 2048x1024@60
    .venv/bin/python bench/video.py --formats landscape-720p
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import imageio_ffmpeg

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
VISUAL_STEPS = ["landmarks", "animate", "render", "compose"]


def snakemake(work: Path, target: str, config: dict) -> float:
    """Run the workflow in ``work`` with ``config`` laid over config.yaml; return wall seconds."""
    overlay = work / "bench-config.yaml"
    overlay.write_text(json.dumps(config))  # JSON is YAML; nested values keep their types
    args = [
        str(SNAKEMAKE),
        target,
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(work),
        "--configfile",
        str(REPO / "config.yaml"),
        str(overlay),
        "--cores",
        str(len(os.sched_getaffinity(0))),
        # The frames are temporary outputs; keep them, their count and size are reported.
        "--notemp",
        "--quiet",
        "all",
    ]
    started = time.perf_counter()
    run = subprocess.run(args, cwd=work, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"snakemake failed:\n{run.stderr[-5000:]}")
    return time.perf_counter() - started


def benchmark(story_dir: Path, step: str) -> tuple[float, float]:
    """Wall seconds and peak memory (MB) of one job, from its Snakemake benchmark file."""
    with open(story_dir / "benchmarks" / f"{step}.tsv") as file:
        row = next(csv.DictReader(file, delimiter="\t"))
    return float(row["s"]), float(row["max_rss"])


def run_setting(name: str, shards: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="storyreel-bench-") as tmp:
        work = Path(tmp)
        config = {
            "story_source": str(REPO / "examples" / "stories" / "{story}.json"),
            "video": {"format": name},
            "render": {"shards": shards},
        }
        snakemake(work, "stories/demo/phonemes.json", config)  # the audio half, not timed here
        wall = snakemake(work, "stories/demo/final.mp4", config)
        story = work / "stories" / "demo"
        phonemes = json.loads((story / "phonemes.json").read_text())
        frames = sorted(story.glob("frames/shard-*/frame-*.png"))
        steps = {step: benchmark(story, step) for step in ("landmarks", "animate", "compose")}
        shard_times = [benchmark(story, f"render-{i}") for i in range(shards)]
        steps["render"] = (max(s for s, _ in shard_times), max(m for _, m in shard_times))
        video_frames, _ = imageio_ffmpeg.count_frames_and_secs(str(story / "final.mp4"))
        return {
            "format": name,
            "speech_s": phonemes["duration"],
            "frames": len(frames),
            "video_frames": video_frames,
            "png_mb": sum(f.stat().st_size for f in frames) / 1e6,
            "steps": steps,
            "wall_s": wall,
            "breakdown": [
                where_time_went(story / "logs" / f"{step}.log") for step in ("render-0", "compose")
            ],
            "mp4_mb": (story / "final.mp4").stat().st_size / 1e6,
        }


def where_time_went(log: Path) -> str:
    """The line in which a step breaks its time down (render: frames in; compose: composed)."""
    lines = [
        line
        for line in log.read_text().splitlines()
        if " frames in " in line or " composed " in line
    ]
    return f"{log.stem}: " + (lines[-1].split(" INFO ", 1)[-1] if lines else "no breakdown")


def print_result(result: dict) -> None:
    steps = result["steps"]
    render_s, compose_s = steps["render"][0], steps["compose"][0]
    print(
        f"\n{result['format']}: {result['speech_s']:.1f} s of speech, "
        f"{result['frames']} presenter frames, {result['video_frames']} video frames"
    )
    print(f"{'step':<10} {'wall s':>7} {'fps':>7} {'peak MB':>8}")
    for step in VISUAL_STEPS:
        seconds, peak = steps[step]
        fps = {
            "render": result["frames"] / render_s,
            "compose": result["video_frames"] / compose_s,
        }.get(step)
        print(f"{step:<10} {seconds:7.2f} {fps if fps else float('nan'):7.1f} {peak:8.0f}")
    print(
        f"render + compose: {render_s + compose_s:.1f} s for {result['speech_s']:.1f} s of "
        f"speech ({(render_s + compose_s) / result['speech_s']:.2f} x real time)"
    )
    for line in result["breakdown"]:
        print(f"  {line}")
    print(
        f"visual half wall time (Snakemake, incl. start-up): {result['wall_s']:.1f} s; "
        f"PNG frames {result['png_mb']:.0f} MB; final.mp4 {result['mp4_mb']:.1f} MB; "
        f"peak memory {max(peak for _, peak in steps.values()):.0f} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", nargs="+", default=["landscape-720p", "landscape-2048"])
    parser.add_argument("--shards", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores, "
        f"Python {platform.python_version()}; render shards: {args.shards}"
    )
    for name in args.formats:
        print_result(run_setting(name, args.shards))


if __name__ == "__main__":
    main()
