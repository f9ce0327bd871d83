"""Face sketches from 68 landmarks: lines where the face's curves are, black elsewhere."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from storyreel.pix2pixhd.sketch import (
    FACE_CURVES,
    cover_box,
    draw_face_sketch,
    draw_face_sketches,
    from_network_output,
    sketch_points,
    to_network_input,
)

LIT = 128


def synthetic_face(center=(128.0, 120.0), half_width=70.0, mouth_gap=0.0) -> np.ndarray:
    """68 iBUG-ordered landmarks of a frontal face; ``mouth_gap`` opens the inner lips (px)."""
    cx, cy = center
    s = half_width
    points = np.zeros((68, 2))
    angles = np.linspace(np.pi, 0.0, 17)  # jaw from the image's left, under the chin, to the right
    points[0:17] = np.stack([cx + s * np.cos(angles), cy - 0.1 * s + 1.2 * s * np.sin(angles)], 1)
    u = np.linspace(0.0, 1.0, 5)
    brow_y = cy - 0.6 * s - 0.1 * s * np.sin(np.pi * u)
    points[17:22] = np.stack([cx - 0.8 * s + 0.65 * s * u, brow_y], 1)
    points[22:27] = np.stack([cx + 0.15 * s + 0.65 * s * u, brow_y], 1)
    points[27:31] = np.stack([np.full(4, cx), np.linspace(cy - 0.45 * s, cy - 0.05 * s, 4)], 1)
    points[31:36] = np.stack(
        [cx - 0.2 * s + 0.4 * s * u, cy + 0.05 * s + 0.05 * s * np.sin(np.pi * u)], 1
    )
    for first, eye_x in ((36, cx - 0.4 * s), (42, cx + 0.4 * s)):
        w, h, ey = 0.3 * s, 0.08 * s, cy - 0.35 * s
        points[first : first + 6] = [
            (eye_x - w / 2, ey),
            (eye_x - w / 6, ey - h),
            (eye_x + w / 6, ey - h),
            (eye_x + w / 2, ey),
            (eye_x + w / 6, ey + h),
            (eye_x - w / 6, ey + h),
        ]
    mx, my, mw = cx, cy + 0.45 * s + mouth_gap / 2, 0.6 * s
    outer = np.linspace(-mw / 2, mw / 2, 7)
    upper_lip = my - mouth_gap / 2 - 0.12 * s * np.cos(np.pi * outer / mw)
    lower_lip = my + mouth_gap / 2 + 0.15 * s * np.cos(np.pi * outer / mw)
    points[48:55] = np.stack([mx + outer, upper_lip], 1)
    points[54:60] = np.stack([mx + outer[::-1][:6], lower_lip[::-1][:6]], 1)
    inner = np.linspace(-0.4 * mw, 0.4 * mw, 5)
    bulge = np.cos(np.pi * inner / (0.8 * mw))  # 0 at the corners, 1 in the middle
    points[60:65] = np.stack([mx + inner, my - mouth_gap / 2 * bulge], 1)
    points[65:68] = np.stack([mx + inner[3:0:-1], my + mouth_gap / 2 * bulge[3:0:-1]], 1)
    return points


def chord_distance(points: np.ndarray, shape) -> np.ndarray:
    """Distance (px) of every pixel to the straight polylines through each curve's landmarks."""
    chords = np.full(shape, 255, dtype=np.uint8)
    for chain in FACE_CURVES.values():
        line = np.round(points[chain] * 16).astype(np.int32)
        cv2.polylines(chords, [line], False, 0, 1, cv2.LINE_8, shift=4)
    return cv2.distanceTransform(chords, cv2.DIST_L2, 5)


def brightest_near(sketch: np.ndarray, point, radius: int = 1) -> int:
    x, y = (int(round(value)) for value in point)
    return int(sketch[y - radius : y + radius + 1, x - radius : x + radius + 1, 0].max())


def test_edges_lie_on_the_landmark_curves_and_nowhere_else():
    points = synthetic_face()
    sketch = draw_face_sketch(points, (256, 256))
    assert sketch.shape == (256, 256, 3) and sketch.dtype == np.uint8
    # One grey image in all three channels (the generator's 3-channel input for label_nc 0).
    assert np.array_equal(sketch[:, :, 0], sketch[:, :, 1])
    assert np.array_equal(sketch[:, :, 0], sketch[:, :, 2])

    # Every landmark, and the jaw line between landmarks, is drawn.
    for point in points:
        assert brightest_near(sketch, point) >= LIT
    for a, b in zip(FACE_CURVES["jaw"][:-1], FACE_CURVES["jaw"][1:], strict=True):
        assert brightest_near(sketch, (points[a] + points[b]) / 2) >= LIT

    # Lit pixels hug the curves; everything a few pixels away is black.
    distance = chord_distance(points, sketch.shape[:2])
    lit = sketch[:, :, 0] > 0
    assert distance[lit].max() <= 3.0
    assert not sketch[distance > 4.0].any()
    # Cheek and forehead, far from every curve, are dark; so are the frame's corners.
    cheek = points[[2, 31, 36]].mean(0)
    assert brightest_near(sketch, cheek, radius=3) == 0
    assert brightest_near(sketch, (points[19] + points[24]) / 2 - (0, 25), radius=3) == 0
    assert not sketch[:10, :10].any() and not sketch[-10:, -10:].any()


def test_open_and_closed_mouths_give_different_sketches():
    closed = draw_face_sketch(synthetic_face(mouth_gap=0.0), (256, 256))
    open_points = synthetic_face(mouth_gap=24.0)
    opened = draw_face_sketch(open_points, (256, 256))

    # Closed: the inner lips meet in one line through the mouth's middle.
    closed_points = synthetic_face(mouth_gap=0.0)
    assert brightest_near(closed, closed_points[[62, 66]].mean(0)) >= LIT
    # Open: the middle of the mouth is dark, with the inner lips drawn above and below it.
    mouth_centre = open_points[[62, 66]].mean(0)
    assert brightest_near(opened, mouth_centre, radius=3) == 0
    assert brightest_near(opened, open_points[62]) >= LIT
    assert brightest_near(opened, open_points[66]) >= LIT

    changed = np.argwhere(closed[:, :, 0] != opened[:, :, 0])
    assert len(changed) > 100
    # Only the mouth and chin moved: the eyes and brows are drawn identically.
    assert np.array_equal(closed[:110], opened[:110])


def test_sketch_coordinates_follow_the_frame_scale_and_box():
    points = synthetic_face()
    # The same frame (256x256) sketched at half size: the curves at half the coordinates.
    small = draw_face_sketch(points, (128, 128), source_size=(256, 256))
    for point in points[[0, 8, 16, 30, 36, 45, 48, 54]]:
        assert brightest_near(small, (point + 0.5) / 2 - 0.5) >= LIT
    # Not square: width and height are not swapped.
    wide = draw_face_sketch(points, (320, 160), source_size=(256, 256))
    assert wide.shape == (160, 320, 3)
    tip = sketch_points(points, (320, 160), source_size=(256, 256))[8]
    assert brightest_near(wide, tip) >= LIT
    # A box (x, y, width, height) of the frame fills the sketch.
    box = (48.0, 40.0, 160.0, 200.0)
    boxed = draw_face_sketch(points, (160, 200), box=box)
    assert brightest_near(boxed, points[8] - box[:2]) >= LIT
    np.testing.assert_allclose(sketch_points(points, (160, 200), box=box), points - box[:2])


def test_cover_box_is_the_centred_part_with_the_sizes_aspect():
    assert cover_box((240, 256), (96, 112)) == (10, 0, 219, 256)  # wider frame: sides cut
    assert cover_box((1280, 720), (512, 512)) == (280, 0, 720, 720)
    assert cover_box((288, 360), (288, 288)) == (0, 36, 288, 288)  # taller frame: top/bottom
    assert cover_box((240, 256), (480, 512)) == (0, 0, 240, 256)  # same aspect: the whole frame
    # The sketch of a box shows the face where the frame's crop resized to size shows it.
    points = synthetic_face()
    x, y, w, h = cover_box((256, 256), (128, 64))
    sketch = draw_face_sketch(points, (128, 64), box=(x, y, w, h))
    assert brightest_near(sketch, (points[30] - (x, y) + 0.5) * (128 / w, 64 / h) - 0.5) >= LIT


def test_line_thickness_follows_the_sketch_height():
    points = synthetic_face()
    thin = draw_face_sketch(points, (256, 256))
    big_points = points * 4
    thick = draw_face_sketch(big_points, (1024, 1024))
    # 4 px lines at 1024 rows against 1 px at 256: about 4x the lit pixels per unit of length.
    ratio = (thick[:, :, 0] > LIT).sum() / (thin[:, :, 0] > LIT).sum()
    assert 10 < ratio < 24


def test_batches_and_network_range():
    frames = np.stack([synthetic_face(mouth_gap=gap) for gap in (0.0, 10.0, 20.0)])
    sketches = draw_face_sketches(frames, (128, 96), source_size=(256, 256))
    assert sketches.shape == (3, 96, 128, 3)
    assert np.array_equal(
        sketches[1], draw_face_sketch(frames[1], (128, 96), source_size=(256, 256))
    )

    tensor = to_network_input(sketches)
    assert tensor.shape == (3, 3, 96, 128) and tensor.dtype == np.float32
    assert tensor.min() == -1.0  # black background
    np.testing.assert_allclose(tensor.max(), sketches.max() / 127.5 - 1.0, rtol=1e-6)
    np.testing.assert_allclose(to_network_input(np.full((2, 2, 3), 255, np.uint8)), 1.0)
    assert np.array_equal(from_network_output(tensor), sketches)
    assert to_network_input(sketches[0]).shape == (1, 3, 96, 128)
    # Values out of tanh's range are clipped, not wrapped.
    assert np.array_equal(
        from_network_output(np.full((1, 3, 2, 2), 3.0)), np.full((1, 2, 2, 3), 255)
    )


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="68"):
        draw_face_sketch(np.zeros((67, 2)), (64, 64))
    with pytest.raises(ValueError, match=r"\(N, 68, 2\)"):
        draw_face_sketches(np.zeros((68, 2)), (64, 64))
    with pytest.raises(ValueError, match="size"):
        draw_face_sketch(synthetic_face(), (0, 64))
    with pytest.raises(ValueError, match="uint8"):
        to_network_input(np.zeros((4, 4, 3), dtype=np.float32))
