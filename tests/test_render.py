"""Presenter frames from landmarks: real dlib landmarks of a real portrait, the real warp.

The reference landmarks come from dlib on scikit-image's astronaut portrait; frames move those
points the way an animation does (lips apart or together, jaw, head). The lip-sync check renders
frames and measures them again with dlib, as the project's quality check does.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import cv2
import dlib
import numpy as np
import pytest
from skimage import data

from storyreel.render import create_backend, render_frame, render_shard, shard_frames

INNER_LIPS = list(range(60, 68))


@pytest.fixture(scope="module")
def dlib_landmarks():
    """A function: RGB image -> (68, 2) landmarks of its largest face, or None."""
    spec = importlib.util.find_spec("face_recognition_models")
    assert spec is not None, "the 68-point model ships in the face_recognition_models package"
    model = Path(spec.origin).parent / "models" / "shape_predictor_68_face_landmarks.dat"
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(model))

    def landmarks(rgb: np.ndarray) -> np.ndarray | None:
        faces = detector(rgb, 1)
        if not faces:
            return None
        face = max(faces, key=lambda box: box.area())
        return np.array([[p.x, p.y] for p in predictor(rgb, face).parts()], dtype=np.float64)

    return landmarks


@pytest.fixture(scope="module")
def portrait(dlib_landmarks):
    """The presenter image (RGB) and its dlib reference landmarks."""
    image = data.astronaut()
    points = dlib_landmarks(image)
    assert points is not None
    return image, points


@pytest.fixture(scope="module")
def warp(portrait):
    return create_backend("warp", *portrait)


def mouth_pose(reference: np.ndarray, gap: float, head=(0.0, 0.0)) -> np.ndarray:
    """Reference landmarks with the inner lips ``gap`` x mouth width apart (0: closed).

    The lower lip and the chin drop with the opening, the upper lip rises a little, as an
    animation moves them; ``head`` shifts the whole face.
    """
    points = reference.copy()
    width = np.linalg.norm(points[64] - points[60])
    current = np.mean(points[[67, 66, 65], 1] - points[[61, 62, 63], 1])
    change = gap * width - current
    upper_share = 0.2 if change > 0 else 0.5
    points[[61, 62, 63, 50, 51, 52], 1] -= upper_share * change
    lower = (1 - upper_share) * change
    points[[65, 66, 67, 56, 57, 58], 1] += lower
    points[[55, 59], 1] += 0.6 * lower
    for jaw, share in {8: 0.85, 7: 0.75, 9: 0.75, 6: 0.55, 10: 0.55, 5: 0.35, 11: 0.35}.items():
        points[jaw, 1] += share * max(lower, 0.0)
    return points + np.asarray(head)


def inner_lip_mask(points: np.ndarray, shape) -> np.ndarray:
    mask = np.zeros(shape[:2], dtype=np.uint8)
    cv2.fillPoly(mask, [np.round(points[INNER_LIPS]).astype(np.int32)], 1)
    return cv2.erode(mask, np.ones((3, 3), np.uint8)).astype(bool)


def lip_gap(points: np.ndarray) -> float:
    """Inner-lip opening at the middle of the mouth, points 62 (upper) to 66 (lower)."""
    return float(np.linalg.norm(points[66] - points[62]))


def write_inputs(folder: Path, image: np.ndarray, reference: np.ndarray, frames: np.ndarray):
    folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / "presenter.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    np.savez_compressed(
        folder / "frames.npz",
        points=frames.astype(np.float32),
        mouth_open=np.zeros(len(frames), dtype=np.float32),
        fps=np.float32(30),
    )
    height, width = image.shape[:2]
    reference_json = {
        "presenter": "astronaut",
        "width": width,
        "height": height,
        "points": reference.tolist(),
        "faces_found": 1,
    }
    (folder / "reference.json").write_text(json.dumps(reference_json), encoding="utf-8")
    return folder / "presenter.png", reference_json, folder / "frames.npz"


def read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def test_shards_write_every_frame_once_at_the_presenter_size(portrait, tmp_path):
    image, reference = portrait
    # A portrait that is not square, so width and height cannot be swapped unnoticed.
    image, reference = np.ascontiguousarray(image[:, 40:488]), reference - [40, 0]
    gaps = 0.3 + 0.25 * np.sin(np.arange(23) / 2)
    frames = np.stack([mouth_pose(reference, gap) for gap in gaps])
    presenter_png, reference_json, frames_npz = write_inputs(tmp_path, image, reference, frames)

    written, counts = [], []
    for shard in range(3):
        out_dir = tmp_path / "frames" / f"shard-{shard}"
        counts.append(
            render_shard(
                "warp",
                presenter_png,
                reference_json,
                frames_npz,
                out_dir,
                shard=shard,
                shards=3,
                progress=False,
            )
        )
        names = sorted(path.name for path in out_dir.iterdir())
        assert names == [f"frame-{k:06d}.png" for k in shard_frames(23, shard, 3)]
        written += names
    assert counts == [7, 8, 8]
    assert sorted(written) == [f"frame-{k:06d}.png" for k in range(23)]

    frame = read_rgb(tmp_path / "frames" / "shard-2" / "frame-000022.png")
    assert frame.shape == image.shape == (512, 448, 3)


def test_reference_landmarks_reproduce_the_portrait(portrait, warp):
    image, reference = portrait
    frame = warp.render(reference)
    assert frame.shape == image.shape and frame.dtype == np.uint8
    assert np.abs(frame.astype(int) - image).mean() < 0.05


def test_open_lips_show_a_dark_mouth_that_dlib_measures_open(portrait, warp, dlib_landmarks):
    image, reference = portrait
    closed_points, open_points = mouth_pose(reference, 0.0), mouth_pose(reference, 0.45)
    closed, opened = warp.render(closed_points), warp.render(open_points)

    luma = cv2.cvtColor(opened, cv2.COLOR_RGB2GRAY).astype(float)
    before = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(float)
    mouth = inner_lip_mask(open_points, image.shape)
    assert mouth.sum() > 150
    # Upper teeth still hang from the lip, but most of the opening is the dark cavity.
    assert luma[mouth].mean() < 0.6 * before[mouth].mean()
    assert np.median(luma[mouth]) < 60

    measured_closed, measured_open = dlib_landmarks(closed), dlib_landmarks(opened)
    assert measured_closed is not None and measured_open is not None
    assert lip_gap(measured_closed) < lip_gap(reference) - 2
    assert lip_gap(measured_open) > lip_gap(measured_closed) + 8
    # The measured opening is the intended one; stretched teeth without the painted cavity
    # measure about 4 px short.
    assert abs(lip_gap(measured_open) - lip_gap(open_points)) < 2.5


def test_pixels_far_from_the_face_do_not_move(portrait, tmp_path):
    image, reference = portrait
    frames = np.stack([mouth_pose(reference, 0.5, head=(4, -3))])
    presenter_png, reference_json, frames_npz = write_inputs(tmp_path, image, reference, frames)
    render_shard(
        "warp",
        presenter_png,
        reference_json,
        frames_npz,
        tmp_path / "out",
        shard=0,
        shards=1,
        progress=False,
    )
    frame = read_rgb(tmp_path / "out" / "frame-000000.png")

    changed = np.abs(frame.astype(int) - image).sum(axis=2) > 0
    assert changed.any()
    face_size = np.ptp(reference, axis=0).max()
    ys, xs = np.mgrid[: image.shape[0], : image.shape[1]]
    distance = np.hypot(xs - reference[:, 0].mean(), ys - reference[:, 1].mean())
    assert not changed[distance > 1.6 * face_size].any()


def test_render_frame_renders_without_files(portrait):
    image, reference = portrait
    frame = render_frame(image, reference, mouth_pose(reference, 0.3))
    assert frame.shape == image.shape
    assert not np.array_equal(frame, image)


def test_unknown_backend_names_the_config_key(portrait, tmp_path):
    image, reference = portrait
    with pytest.raises(ValueError, match=r"render\.backend.*warp"):
        create_backend("pix2pix", image, reference)
    presenter_png, reference_json, frames_npz = write_inputs(
        tmp_path, image, reference, reference[None]
    )
    with pytest.raises(ValueError, match=r"render\.backend"):
        render_shard(
            "nerf",
            presenter_png,
            reference_json,
            frames_npz,
            tmp_path / "out",
            shard=0,
            shards=1,
            progress=False,
        )
