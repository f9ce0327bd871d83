"""The presenter portrait and its landmarks, with the real dlib detector and 68-point model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from skimage import data

from storyreel.presenter import detect_reference, inter_ocular_distance


def inside(points: np.ndarray, box) -> bool:
    x0, y0, x1, y1 = box
    return bool(
        np.all(
            (points[:, 0] >= x0)
            & (points[:, 0] <= x1)
            & (points[:, 1] >= y0)
            & (points[:, 1] <= y1)
        )
    )


def grown(box, fraction: float):
    x0, y0, x1, y1 = box
    dx, dy = fraction * (x1 - x0), fraction * (y1 - y0)
    return (x0 - dx, y0 - dy, x1 + dx, y1 + dy)


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory):
    folder = tmp_path_factory.mktemp("presenter")
    reference = detect_reference(
        None, folder / "presenter.png", folder / "reference.json", name="astronaut"
    )
    return folder, reference


def test_default_portrait_gives_68_points_on_the_face(astronaut):
    folder, reference = astronaut
    assert json.loads((folder / "reference.json").read_text(encoding="utf-8")) == reference
    with Image.open(folder / "presenter.png") as png:
        assert png.mode == "RGB"
        assert png.size == (reference["width"], reference["height"]) == (512, 512)

    points = np.array(reference["points"], dtype=float)
    assert points.shape == (68, 2)
    assert reference["presenter"] == "astronaut"
    assert reference["faces_found"] >= 1
    assert inside(points, (0, 0, reference["width"] - 1, reference["height"] - 1))
    # dlib's box is tight around eyes, nose and mouth; the jaw line and brows reach a little
    # beyond it.
    box = reference["face_box"]
    assert inside(points[27:68], box)
    assert inside(points, grown(box, 0.25))
    # Anatomy, not just numbers: eyes above the nose tip above the mouth above the chin.
    assert points[36:48, 1].mean() < points[30, 1] < points[48:68, 1].mean() < points[8, 1]
    assert points[36:42, 0].mean() < points[42:48, 0].mean()
    assert 35 < inter_ocular_distance(points) < 55


@pytest.mark.parametrize("picture", ["flat", "rocket"])
def test_image_without_a_face_fails_naming_the_file(tmp_path, picture):
    path = tmp_path / f"{picture}.png"
    if picture == "flat":
        Image.new("RGB", (400, 300), (120, 140, 160)).save(path)
    else:
        Image.fromarray(data.rocket()).save(path)
    with pytest.raises(ValueError, match="no face found") as failure:
        detect_reference(path, tmp_path / "p.png", tmp_path / "r.json", name="x")
    assert str(path) in str(failure.value)
    assert "front-facing portrait" in str(failure.value)
    assert not (tmp_path / "r.json").exists()


def test_largest_of_several_faces_is_used_and_sides_come_out_even(tmp_path):
    portrait = data.astronaut()
    small = np.asarray(Image.fromarray(portrait).resize((300, 300), Image.Resampling.LANCZOS))
    # Odd width and height, the small face first: the choice must not depend on order.
    canvas = np.full((515, 823, 3), 200, dtype=np.uint8)
    canvas[:300, :300] = small
    canvas[3:, 311:] = portrait
    path = tmp_path / "two.png"
    Image.fromarray(canvas).save(path)

    reference = detect_reference(
        path, tmp_path / "presenter.png", tmp_path / "reference.json", name="pair", max_side=800
    )
    assert reference["faces_found"] >= 2
    # Shrunk to fit 800 pixels, then cropped to even sides for the video encoder.
    scale = 800 / 823
    assert reference["width"] % 2 == 0 and reference["height"] % 2 == 0
    assert reference["width"] <= 800 and abs(reference["height"] - 515 * scale) <= 1
    # The big astronaut's face, mapped into the shrunk image.
    points = np.array(reference["points"], dtype=float)
    assert inside(points[27:68], reference["face_box"])
    assert reference["face_box"][0] > 300 * scale
    assert inter_ocular_distance(points) == pytest.approx(43.4 * scale, rel=0.1)


def test_greyscale_portrait_becomes_rgb(tmp_path):
    path = tmp_path / "grey.png"
    Image.fromarray(data.astronaut()).convert("L").save(path)
    reference = detect_reference(path, tmp_path / "p.png", tmp_path / "r.json", name="grey")
    with Image.open(tmp_path / "p.png") as png:
        assert png.mode == "RGB"
    assert inside(np.array(reference["points"])[27:68], reference["face_box"])
