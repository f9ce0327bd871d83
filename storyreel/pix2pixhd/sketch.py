"""Face sketches: the edge map a pix2pixHD presenter generator turns into a frame.

Each frame's 68 landmarks (iBUG numbering, pixel coordinates of the presenter frame, as
``landmarks/frames.npz`` and ``reference.json`` hold them) become white curves on black: the jaw
line, both brows, the nose bridge and nostril line, both eyes (upper and lower lid) and the outer
and inner lips (upper and lower). Every curve is a Catmull-Rom spline through its landmarks, so
the sketch is smooth at any resolution, not a polygon. The same grey image is written into all
three channels: the generator's input for ``label_nc 0`` is a 3-channel image.

The sketch covers the whole frame (or the ``box`` of it a model was trained on), scaled to the
training ``size``; training data and rendering must use the same ``size`` and ``box``. Only numpy
and OpenCV are needed, so the training data pipeline shares this module with the renderer.

Main entry points:

- ``draw_face_sketch(points, size, *, source_size=None, box=None, thickness=None)`` -> (H, W, 3)
  uint8 for one frame; ``size`` is the sketch's (width, height).
- ``draw_face_sketches(frames, size, ...)`` -> (N, H, W, 3) uint8 for (N, 68, 2) landmarks.
- ``cover_box(frame_size, size)`` -> (x, y, width, height): the centred part of a frame with the
  aspect of ``size``, the ``box`` training and rendering both use.
- ``to_network_input(images)`` -> float32 NCHW in [-1, 1] (pix2pixHD's input normalisation).
- ``from_network_output(tensor_like)`` -> uint8 NHWC from a generator's [-1, 1] output.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from storyreel.render.base import N_LANDMARKS, as_landmarks
from storyreel.render.geometry import (
    INNER_LOWER_LIP,
    INNER_UPPER_LIP,
    OUTER_LOWER_LIP,
    OUTER_UPPER_LIP,
    curve_weights,
)

__all__ = [
    "FACE_CURVES",
    "cover_box",
    "draw_face_sketch",
    "draw_face_sketches",
    "from_network_output",
    "sketch_points",
    "to_network_input",
]

# Open chains of landmarks, each drawn as one spline. Closed outlines (eyes, lips) are two chains
# from corner to corner, so the corners stay sharp and a closed eye or mouth collapses to a line.
FACE_CURVES: dict[str, list[int]] = {
    "jaw": list(range(0, 17)),
    "right_brow": list(range(17, 22)),
    "left_brow": list(range(22, 27)),
    "nose_bridge": list(range(27, 31)),
    "nostrils": list(range(31, 36)),
    "right_upper_lid": [36, 37, 38, 39],
    "right_lower_lid": [39, 40, 41, 36],
    "left_upper_lid": [42, 43, 44, 45],
    "left_lower_lid": [45, 46, 47, 42],
    "outer_upper_lip": OUTER_UPPER_LIP,
    "outer_lower_lip": OUTER_LOWER_LIP,
    "inner_upper_lip": INNER_UPPER_LIP,
    "inner_lower_lip": INNER_LOWER_LIP,
}
SAMPLES_PER_SEGMENT = 8
# cv2 draws with fixed-point coordinates: 4 fractional bits keep sub-pixel curve positions.
FRACTION_BITS = 4


def _curve_matrices() -> list[np.ndarray]:
    return [curve_weights(chain, SAMPLES_PER_SEGMENT) for chain in FACE_CURVES.values()]


CURVE_MATRICES = _curve_matrices()


def cover_box(frame_size: Sequence[int], size: Sequence[int]) -> tuple[int, int, int, int]:
    """``(x, y, width, height)``: the largest centred part of a ``frame_size`` frame with the
    aspect of ``size`` (both (width, height)), in whole pixels.

    A model trained at ``size`` sees this part of each training frame, resized to ``size``; the
    renderer draws the sketch with the same box of the presenter frame and puts the generated
    image back there, so training and rendering agree whatever the frame's aspect.
    """
    frame_w, frame_h = _size(frame_size, "frame_size")
    width, height = _size(size, "size")
    if frame_w * height >= frame_h * width:  # the frame is wider: crop its sides
        box_w, box_h = min(frame_w, max(1, round(frame_h * width / height))), frame_h
    else:
        box_w, box_h = frame_w, min(frame_h, max(1, round(frame_w * height / width)))
    return (frame_w - box_w) // 2, (frame_h - box_h) // 2, box_w, box_h


def sketch_points(
    points,
    size: Sequence[int],
    *,
    source_size: Sequence[int] | None = None,
    box: Sequence[float] | None = None,
) -> np.ndarray:
    """Landmarks moved from frame pixels to sketch pixels (float64 (68, 2)).

    ``box`` = (x, y, width, height) is the part of the frame the sketch shows (default: the
    whole ``source_size`` = (width, height) frame; default ``source_size``: ``size``).
    """
    array = as_landmarks(points, label="sketch landmarks")
    width, height = _size(size, "size")
    if box is None:
        source_width, source_height = _size(source_size or size, "source_size")
        box = (0.0, 0.0, source_width, source_height)
    x0, y0, box_width, box_height = (float(value) for value in box)
    if box_width <= 0 or box_height <= 0:
        raise ValueError(f"sketch box {tuple(box)}: width and height must be positive")
    # Pixel centres map to pixel centres, as cv2.resize maps the frame to the sketch size.
    scale = np.array([width / box_width, height / box_height])
    return (array - (x0, y0) + 0.5) * scale - 0.5


def draw_face_sketch(
    points,
    size: Sequence[int],
    *,
    source_size: Sequence[int] | None = None,
    box: Sequence[float] | None = None,
    thickness: int | None = None,
) -> np.ndarray:
    """The (height, width, 3) uint8 sketch of one frame's landmarks; ``size`` = (width, height).

    ``thickness`` defaults to 1 px per 256 px of sketch height (at least 1), so the lines cover
    the same share of the face at every training resolution.
    """
    width, height = _size(size, "size")
    canvas_points = sketch_points(points, (width, height), source_size=source_size, box=box)
    if thickness is None:
        thickness = max(1, round(height / 256))
    grey = np.zeros((height, width), dtype=np.uint8)
    fixed = 1 << FRACTION_BITS
    curves = [
        np.round((matrix @ canvas_points) * fixed).astype(np.int32) for matrix in CURVE_MATRICES
    ]
    cv2.polylines(
        grey,
        curves,
        isClosed=False,
        color=255,
        thickness=int(thickness),
        lineType=cv2.LINE_AA,
        shift=FRACTION_BITS,
    )
    return np.repeat(grey[:, :, None], 3, axis=2)


def draw_face_sketches(
    frames,
    size: Sequence[int],
    *,
    source_size: Sequence[int] | None = None,
    box: Sequence[float] | None = None,
    thickness: int | None = None,
) -> np.ndarray:
    """(N, height, width, 3) uint8 sketches of (N, 68, 2) landmarks."""
    frames = np.asarray(frames, dtype=np.float64)
    if frames.ndim != 3 or frames.shape[1:] != (N_LANDMARKS, 2):
        raise ValueError(f"sketch frames: expected (N, 68, 2) landmarks, got {frames.shape}")
    width, height = _size(size, "size")
    out = np.empty((len(frames), height, width, 3), dtype=np.uint8)
    for k, points in enumerate(frames):
        out[k] = draw_face_sketch(
            points, (width, height), source_size=source_size, box=box, thickness=thickness
        )
    return out


def to_network_input(images: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) or (N, H, W, 3) images -> float32 (N, 3, H, W) in [-1, 1]."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.shape[-1] != 3 or images.ndim not in (3, 4):
        raise ValueError(
            f"expected uint8 (H, W, 3) or (N, H, W, 3) images, got {images.dtype} {images.shape}"
        )
    if images.ndim == 3:
        images = images[None]
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / 127.5 - 1.0


def from_network_output(output: np.ndarray) -> np.ndarray:
    """A generator's float (N, 3, H, W) output in [-1, 1] -> uint8 (N, H, W, 3) RGB."""
    output = np.asarray(output, dtype=np.float32)
    if output.ndim != 4 or output.shape[1] != 3:
        raise ValueError(f"expected generator output (N, 3, H, W), got {output.shape}")
    scaled = np.clip((output.transpose(0, 2, 3, 1) + 1.0) * 127.5 + 0.5, 0, 255)
    return scaled.astype(np.uint8)


def _size(size, label: str) -> tuple[int, int]:
    try:
        width, height = (int(value) for value in size)
    except (TypeError, ValueError):
        raise ValueError(f"sketch {label}: expected (width, height), got {size!r}") from None
    if width < 1 or height < 1:
        raise ValueError(f"sketch {label}: expected positive (width, height), got {size!r}")
    return width, height
