"""Presenter training for the pix2pixHD renderer, on a real (small) presenter video.

The video is made the way a newsroom's would look to the pipeline: the warp renderer animates
the demo presenter (scikit-image's astronaut, cropped to a landscape 2:1 shot around her face)
through mouth openings, a blink and slight head motion, and ffmpeg encodes the frames to H.264.
Training then decodes it, finds the face with dlib in every frame and trains a tiny pix2pixHD
(ngf 8) with the real losses and optimizers.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import REPO, SNAKEMAKE  # noqa: E402

from storyreel.compose import find_ffmpeg  # noqa: E402
from storyreel.pix2pixhd.dataset import (  # noqa: E402
    DatasetError,
    build_pairs,
    prepare_pairs,
    video_frames,
)
from storyreel.pix2pixhd.networks import GlobalGenerator, LocalEnhancer  # noqa: E402
from storyreel.pix2pixhd.train import (  # noqa: E402
    TrainingError,
    parse_settings,
    train,
    train_presenter,
)
from storyreel.presenter import detect_reference  # noqa: E402
from storyreel.render import create_backend  # noqa: E402

FRAMES = 36
FPS = 12
# A tiny network: pix2pixHD's architecture and losses, narrow and shallow enough for 2 cores.
TINY = {
    "ngf": 8,
    "n_blocks_global": 3,
    "ndf": 8,
    "n_layers_D": 2,
    "batch_size": 1,
    "sample_count": 3,
    "seed": 3,
}


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread: these networks are too small to share, and on a busy 2-core machine
    two spinning threads per step run several times slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def talking_track(reference: np.ndarray, count: int) -> np.ndarray:
    """(count, 68, 2) landmarks: the mouth opening and closing, one blink, the head drifting."""
    frames = []
    mouth_width = np.linalg.norm(reference[54] - reference[48])
    eye_height = np.linalg.norm(reference[41] - reference[37])
    for k in range(count):
        points = reference.copy()
        opening = 0.22 * mouth_width * max(0.0, np.sin(k * 0.9))
        points[[65, 66, 67, 55, 56, 57, 58, 59], 1] += opening
        points[[5, 6, 7, 8, 9, 10, 11], 1] += 0.6 * opening
        if k in (20, 21):  # a blink: the upper lids come down onto the lower ones
            points[[37, 38, 43, 44], 1] += 0.9 * eye_height
        points += [2.0 * np.sin(k / 6), 1.0 * np.cos(k / 7)]
        frames.append(points)
    return np.stack(frames)


@pytest.fixture(scope="module")
def presenter_video(tmp_path_factory) -> Path:
    """An H.264 video of the demo presenter talking, rendered by the warp backend."""
    import cv2
    from skimage import data

    folder = tmp_path_factory.mktemp("presenter-video")
    # A landscape 2:1 shot around her face, like a studio camera's (pix2pixHD sizes are 2:1).
    shot = np.ascontiguousarray(data.astronaut()[20:220, 100:500])
    cv2.imwrite(str(folder / "shot.png"), cv2.cvtColor(shot, cv2.COLOR_RGB2BGR))
    reference = detect_reference(
        folder / "shot.png",
        folder / "presenter.png",
        folder / "reference.json",
        name="astronaut",
        framing=None,
    )
    portrait = cv2.cvtColor(cv2.imread(str(folder / "presenter.png")), cv2.COLOR_BGR2RGB)
    warp = create_backend("warp", portrait, reference["points"])
    height, width = portrait.shape[:2]
    video = folder / "presenter.mp4"
    encoder = subprocess.Popen(
        [
            find_ffmpeg("bundled"),
            *("-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo"),
            *("-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-framerate", str(FPS)),
            *("-i", "pipe:0", "-c:v", "libx264", "-crf", "16", "-pix_fmt", "yuv420p"),
            str(video),
        ],
        stdin=subprocess.PIPE,
    )
    track = talking_track(np.asarray(reference["points"], dtype=float), FRAMES)
    for points in track:
        encoder.stdin.write(warp.render(points).tobytes())
    encoder.stdin.close()
    assert encoder.wait() == 0
    return video


def settings_for(stages, **extra):
    return parse_settings({"presenter": "astronaut", **TINY, **extra, "stages": stages})


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_pairs_come_from_every_frame_with_a_face(presenter_video, tmp_path):
    pairs = prepare_pairs(presenter_video, tmp_path / "pairs", [(128, 64), (256, 128)])
    manifest = json.loads((tmp_path / "pairs" / "manifest.json").read_text())
    assert manifest["frames_read"] == FRAMES
    assert manifest["pairs"] + manifest["frames_without_face"] == FRAMES
    assert manifest["pairs"] >= FRAMES - 2
    small, large = pairs[(128, 64)], pairs[(256, 128)]
    sketch, frame = small.load(0)
    assert sketch.shape == frame.shape == (64, 128, 3)
    assert large.load(0)[0].shape == (128, 256, 3)
    # The sketch is white lines on black, over the face: the mouth region of the frame.
    assert 0.01 < (sketch[:, :, 0] > 64).mean() < 0.3
    # A second call reuses the cache: the files are not rewritten.
    stamp = small.frame_path(0).stat().st_mtime_ns
    prepare_pairs(presenter_video, tmp_path / "pairs", [(128, 64), (256, 128)])
    assert small.frame_path(0).stat().st_mtime_ns == stamp


def test_frames_without_a_face_are_skipped_and_counted(presenter_video, tmp_path, caplog):
    frames = list(video_frames(presenter_video, max_frames=2))
    grey = np.full_like(frames[0], 128)  # a cut to an empty studio: no face
    with caplog.at_level("INFO", logger="storyreel.pix2pixhd.dataset"):
        pairs = build_pairs([frames[0], grey, frames[1]], tmp_path / "pairs", [(128, 64)])
    assert pairs[(128, 64)].count == 2
    manifest = json.loads((tmp_path / "pairs" / "manifest.json").read_text())
    assert (manifest["frames_read"], manifest["frames_without_face"]) == (3, 1)
    assert "1 frames skipped without a face" in caplog.text
    with pytest.raises(DatasetError, match="no face found in any of 1 frames"):
        build_pairs([grey], tmp_path / "none", [(128, 64)])
    assert not (tmp_path / "none").exists()


LEARNING_STEPS = 120


@pytest.fixture(scope="module")
def tiny_model(presenter_video, tmp_path_factory):
    """A tiny pix2pixHD trained for LEARNING_STEPS steps on the presenter video: its folder
    (models/astronaut/) and the run's summary."""
    settings = settings_for(
        [{"generator": "global", "size": [128, 64], "steps": LEARNING_STEPS}],
        log_every=20,
        sample_every=40,
        checkpoint_every=60,
    )
    folder = tmp_path_factory.mktemp("models") / "astronaut"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = train(settings, folder, video=presenter_video)
    finally:
        torch.set_num_threads(threads)
    return folder, summary


def test_tiny_pix2pixhd_learns_the_presenter(tiny_model):
    folder, summary = tiny_model
    work = folder / "training"
    records = read_log(work / "loss_log.jsonl")
    evaluations = [r for r in records if "fixed_l1" in r]
    assert [r["step"] for r in evaluations] == [0, 40, 80, 120]
    initial, final = evaluations[0]["fixed_l1"], evaluations[-1]["fixed_l1"]
    assert final < 0.6 * initial, (initial, final)
    losses = [r for r in records if "G_GAN" in r]
    assert [r["step"] for r in losses] == list(range(20, LEARNING_STEPS + 1, 20))
    assert all(np.isfinite(r[key]) for r in losses for key in ("G_GAN_Feat", "D_real", "D_fake"))
    assert summary["step"] == LEARNING_STEPS and summary["finished"]
    assert summary["generator"] == "global" and summary["box"] == [0, 0, 400, 200]

    # NVIDIA's checkpoint format: a plain state_dict that the generator loads strictly.
    state = torch.load(folder / "latest_net_G.pth", weights_only=True)
    assert all(isinstance(value, torch.Tensor) for value in state.values())
    generator = GlobalGenerator(3, 3, ngf=8, n_blocks=3)
    generator.load_state_dict(state, strict=True)
    assert state["model.1.weight"].shape == (8, 3, 7, 7)

    import cv2

    sheet = cv2.imread(str(work / evaluations[-1]["sample"]))
    assert sheet.shape == (3 * 64, 3 * 128, 3)  # rows: examples; columns: sketch, fake, real


def snakemake(workdir: Path, *targets: str, overlay: dict) -> subprocess.CompletedProcess:
    """The real workflow with config.yaml and ``overlay`` laid over it (nested values go in a
    config file: --config would pass their numbers as strings)."""
    overlay_file = workdir / "overlay.yaml"
    overlay_file.write_text(json.dumps(overlay))
    args = [str(SNAKEMAKE), *targets, "--snakefile", str(REPO / "Snakefile")]
    args += ["--directory", str(workdir), "--cores", "2"]
    args += ["--configfile", str(REPO / "config.yaml"), str(overlay_file)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, capture_output=True, text=True, cwd=workdir, env=env)


def test_the_trained_model_renders_a_story(tiny_model, story_factory, tmp_path):
    """A story through the whole workflow with render.backend pix2pixhd and that checkpoint."""
    import cv2

    folder, _ = tiny_model
    story = story_factory("anchor", text="The bridge opens on Monday.")
    overlay = {
        "story_source": str(story.parent / "{story}.json"),
        "render": {
            "backend": "pix2pixhd",
            "shards": 1,
            "pix2pixhd": {"checkpoint": str(folder / "latest_net_G.pth"), "size": [128, 64]},
        },
    }
    run = snakemake(tmp_path, "stories/anchor/final.mp4", overlay=overlay)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    story_dir = tmp_path / "stories" / "anchor"
    assert (story_dir / "final.mp4").stat().st_size > 10_000
    render_log = (story_dir / "logs" / "render-0.log").read_text()
    assert "pix2pixhd: global generator" in render_log
    # The generated presenter panel is in the video: decode a frame from the middle.
    frame = subprocess.run(
        [find_ffmpeg("bundled"), "-v", "error", "-ss", "2.5", "-i", str(story_dir / "final.mp4")]
        + ["-frames:v", "1", "-f", "image2", "-c:v", "png", "pipe:1"],
        capture_output=True,
        check=True,
    ).stdout
    image = cv2.imdecode(np.frombuffer(frame, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[:2] == (720, 1280)


def test_resumed_training_continues_where_it_stopped(presenter_video, tmp_path):
    """Two stages (global, then the local enhancer with its global part fixed for 3 steps);
    stopped at step 6 and restarted, the run ends with exactly the weights of a run that never
    stopped: the step, both optimizers' state and the data order were all restored."""
    stages = [
        {"generator": "global", "size": [128, 64], "steps": 4},
        {"generator": "local", "size": [256, 128], "steps": 6, "fix_global_steps": 3},
    ]
    settings = settings_for(stages, log_every=1, sample_every=100, checkpoint_every=100)
    straight = tmp_path / "straight"
    train(settings, straight, video=presenter_video)

    resumed = tmp_path / "resumed"
    first = train(settings, resumed, video=presenter_video, stop_after=6)
    assert first["step"] == 6 and not first["finished"]
    saved = torch.load(resumed / "training" / "state.pt", weights_only=True)
    assert saved["step"] == 6 and saved["scope"] == "local-fixed"
    # Adam's per-parameter step counts are those of the 2 local-fixed steps so far.
    assert {int(s["step"]) for s in saved["opt_G"]["state"].values()} == {2}
    second = train(settings, resumed, video=presenter_video)
    assert second["step"] == 10 and second["finished"] and second["generator"] == "local"

    steps = [r["step"] for r in read_log(resumed / "training" / "loss_log.jsonl") if "G_GAN" in r]
    assert steps == list(range(1, 11))
    a = torch.load(straight / "latest_net_G.pth", weights_only=True)
    b = torch.load(resumed / "latest_net_G.pth", weights_only=True)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)

    local = LocalEnhancer(3, 3, ngf=4, n_blocks_global=3)
    local.load_state_dict(b, strict=True)

    # A rerun of a finished training (Snakemake removed its outputs first) trains nothing and
    # writes the same generator again.
    (resumed / "latest_net_G.pth").unlink()
    again = train(settings, resumed, video=presenter_video)
    assert again["step"] == 10
    c = torch.load(resumed / "latest_net_G.pth", weights_only=True)
    assert all(torch.equal(b[key], c[key]) for key in b)


def test_vgg_perceptual_loss_from_a_local_weights_file(presenter_video, tmp_path):
    """With training.vgg_weights (torchvision's VGG19 layout) the perceptual loss is added;
    a file of another network is refused by name. Random weights stand in for ImageNet's."""
    from storyreel.pix2pixhd.train import Vgg19Features

    weights = tmp_path / "vgg19.pth"
    torch.save({k: v for k, v in Vgg19Features().state_dict().items() if "features" in k}, weights)
    stages = [{"generator": "global", "size": [64, 32], "steps": 1}]
    settings = settings_for(stages, log_every=1, vgg_weights=str(weights))
    train(settings, tmp_path / "m", video=presenter_video)
    (record,) = [
        r for r in read_log(tmp_path / "m" / "training" / "loss_log.jsonl") if "G_GAN" in r
    ]
    assert record["G_VGG"] > 0

    other = tmp_path / "other.pth"
    torch.save(GlobalGenerator(3, 3, ngf=8, n_blocks=3).state_dict(), other)
    with pytest.raises(TrainingError, match=r"other.pth: not torchvision VGG19 weights"):
        train(settings_for(stages, vgg_weights=str(other)), tmp_path / "n", video=presenter_video)


def test_settings_errors_name_the_key():
    with pytest.raises(TrainingError, match=r"training.stages\[1\]: a global stage"):
        settings_for(
            [
                {"generator": "local", "size": [256, 128], "steps": 1},
                {"generator": "global", "size": [128, 64], "steps": 1},
            ]
        )
    with pytest.raises(TrainingError, match=r"stages\[0\].size 100x64: .*multiples of 16"):
        settings_for([{"generator": "global", "size": [100, 64], "steps": 1}])


def test_training_refuses_a_state_of_other_networks(presenter_video, tmp_path):
    stages = [{"generator": "global", "size": [128, 64], "steps": 2}]
    train(settings_for(stages, log_every=1), tmp_path / "m", video=presenter_video)
    with pytest.raises(TrainingError, match=r"state.pt: saved with other network settings"):
        train(settings_for(stages, ngf=16), tmp_path / "m", video=presenter_video)


def test_rule_trains_only_when_asked_for(presenter_video, tmp_path):
    """`snakemake models/astronaut/latest_net_G.pth` trains; the default target does not."""
    training = {
        "presenter": "astronaut",
        "video": str(presenter_video),
        **TINY,
        "log_every": 1,
        "stages": [{"generator": "global", "size": [128, 64], "steps": 3}],
    }
    overlay = {"story_source": str(REPO / "examples/stories/{story}.json"), "training": training}
    dry = snakemake(tmp_path, "-n", overlay=overlay)
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
    assert "train_presenter" not in dry.stdout and "rule compose" in dry.stdout
    run = snakemake(tmp_path, "models/astronaut/latest_net_G.pth", overlay=overlay)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads((tmp_path / "models" / "astronaut" / "training.json").read_text())
    assert summary["step"] == 3 and summary["netG"]["ngf"] == 8
    GlobalGenerator(3, 3, ngf=8, n_blocks=3).load_state_dict(
        torch.load(tmp_path / "models" / "astronaut" / "latest_net_G.pth", weights_only=True)
    )
    assert (tmp_path / "models" / "astronaut" / "logs" / "train_presenter.log").is_file()

    with pytest.raises(TrainingError, match="training.presenter is 'astronaut', not 'anchor'"):
        train_presenter(
            video=str(presenter_video),
            checkpoint=str(tmp_path / "anchor" / "latest_net_G.pth"),
            summary=str(tmp_path / "anchor" / "training.json"),
            training=training,
            ffmpeg="bundled",
            presenter="anchor",
        )
