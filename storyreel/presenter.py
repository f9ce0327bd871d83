"""The presenter portrait and its 68 facial landmarks (``landmarks/reference.json``).

The portrait is normalised to an RGB PNG (``presenter.png``) that every later step draws on,
and dlib's 68-point shape predictor (iBUG 300-W layout) marks its face. Without an image the
presenter is ``skimage.data.astronaut()``, a public-domain NASA portrait that ships inside the
scikit-image wheel. The 68-point model was trained on iBUG 300-W, whose licence excludes
commercial use.
"""

from __future__ import annotations

import importlib.util
import logging
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from storyreel.steps import write_json
from storyreel.story import StoryError

log = logging.getLogger(__name__)

DEFAULT_PRESENTER_LABEL = "skimage.data.astronaut()"
LANDMARK_MODEL = "shape_predictor_68_face_landmarks.dat"
NUM_LANDMARKS = 68

# Detections at least this fraction of the largest one's area count as equally large; the
# detector's most confident of them wins. With upsampling, dlib finds a false face on the
# astronaut's shoulder patch that is as large as her real face (to within a pixel), so "the
# largest" alone would be decided by a pixel of box size.
SAME_SIZE_FRACTION = 0.8


def detect_reference(
    image_path: Path | None,
    out_png: Path,
    out_json: Path,
    *,
    name: str,
    max_side: int = 1024,
    framing: float | None = None,
) -> dict:
    """Normalise the presenter portrait, find its face and write the 68 landmarks.

    ``image_path`` None means the default portrait. The image is fitted within ``max_side``
    pixels (never enlarged) and cropped to even dimensions (the video encoder's chroma
    subsampling needs them). Several faces: the largest is used. No face: ``StoryError``
    (a ``ValueError``) naming the file. Returns the ``reference.json`` dict.
    """
    label = DEFAULT_PRESENTER_LABEL if image_path is None else str(image_path)
    image = _load_portrait(image_path, label)
    image = _fit(image, max_side)
    pixels = np.asarray(image)

    detections = _find_faces(pixels)
    if not detections:
        raise StoryError(
            f"presenter image {label}: no face found; use a front-facing portrait "
            "with one clearly visible face (at least about 80 pixels wide)"
        )
    box, score = _choose_face(detections)
    if len(detections) > 1:
        others = ", ".join(
            f"{list(other)} (score {other_score:.2f})"
            for other, other_score in detections
            if other != box
        )
        log.info(
            "presenter image %s: %d faces found; using the largest %s (score %.2f), not %s",
            label,
            len(detections),
            list(box),
            score,
            others,
        )

    points = _landmarks(pixels, box)
    if framing:
        crop = head_and_shoulders(box, image.size, framing)
        image = image.crop(crop)
        points -= np.array(crop[:2], dtype=points.dtype)
        box = (box[0] - crop[0], box[1] - crop[1], box[2] - crop[0], box[3] - crop[1])
        log.info("presenter image %s: framed head and shoulders at %s", label, list(crop))
    height, width = image.height, image.width
    # A face at the image border can have jaw points predicted outside it.
    points[:, 0] = points[:, 0].clip(0, width - 1)
    points[:, 1] = points[:, 1].clip(0, height - 1)
    x0, y0, x1, y1 = box
    reference = {
        "presenter": name,
        "width": width,
        "height": height,
        "face_box": [max(x0, 0), max(y0, 0), min(x1, width - 1), min(y1, height - 1)],
        "points": points.tolist(),
        "faces_found": len(detections),
    }

    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    tmp_png = out_png.with_name(out_png.name + ".tmp")
    image.save(tmp_png, format="PNG")
    tmp_png.replace(out_png)
    write_json(out_json, reference)
    log.info(
        "presenter %s: %dx%d, face box %s, inter-ocular distance %.1f px",
        name,
        width,
        height,
        reference["face_box"],
        inter_ocular_distance(points),
    )
    return reference


def inter_ocular_distance(points: np.ndarray) -> float:
    """Distance between the eye centres, the face's scale."""
    points = np.asarray(points, dtype=float)
    return float(np.linalg.norm(points[42:48].mean(axis=0) - points[36:42].mean(axis=0)))


def landmark_model_path() -> Path:
    """Where ``face_recognition_models`` keeps the 68-point model.

    The package is located, not imported: its ``__init__`` imports ``pkg_resources``, which
    recent setuptools no longer ship.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "the face_recognition_models package is not installed "
            "(pip install face_recognition_models); it ships the 68-point landmark model"
        )
    path = Path(spec.origin).parent / "models" / LANDMARK_MODEL
    if not path.is_file():
        raise RuntimeError(f"landmark model missing: {path}")
    return path


@cache
def _face_detector():
    import dlib

    return dlib.get_frontal_face_detector()


@cache
def _shape_predictor():
    # 100 MB; loading takes about 2 s, so once per process.
    import dlib

    return dlib.shape_predictor(str(landmark_model_path()))


def _load_portrait(image_path: Path | None, label: str) -> Image.Image:
    if image_path is None:
        from skimage import data

        return Image.fromarray(data.astronaut())
    try:
        with Image.open(image_path) as opened:
            opened.load()
            image = ImageOps.exif_transpose(opened)
    except FileNotFoundError:
        raise StoryError(f"presenter image {label}: file does not exist") from None
    except (UnidentifiedImageError, OSError) as err:
        raise StoryError(f"presenter image {label}: not a readable image ({err})") from None
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        # Transparent pixels have arbitrary colour underneath: put the portrait on white.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def head_and_shoulders(
    box: tuple[int, int, int, int], size: tuple[int, int], framing: float
) -> tuple[int, int, int, int]:
    """A 4:5 crop ``framing`` face widths wide, the face in its upper half, inside the image.

    The crop's sides are even (the encoder's chroma subsampling needs it); where the image is
    too small for the crop, the crop shrinks and keeps its aspect.
    """
    width, height = size
    x0, y0, x1, y1 = box
    crop_w = (x1 - x0) * framing
    crop_h = crop_w * 1.25
    scale = min(1.0, width / crop_w, height / crop_h)
    crop_w, crop_h = 2 * int(crop_w * scale / 2), 2 * int(crop_h * scale / 2)
    left = round((x0 + x1) / 2 - crop_w / 2)
    top = round((y0 + y1) / 2 - 0.4 * crop_h)  # face centre 40 % down: room for shoulders
    left = min(max(left, 0), width - crop_w)
    top = min(max(top, 0), height - crop_h)
    return left, top, left + crop_w, top + crop_h


def _fit(image: Image.Image, max_side: int) -> Image.Image:
    """Shrink to fit ``max_side`` (never enlarge), then crop a pixel off odd sides."""
    width, height = image.size
    scale = min(1.0, max_side / max(width, height))
    if scale < 1.0:
        size = (max(2, round(width * scale)), max(2, round(height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
        width, height = image.size
    even = (width - width % 2, height - height % 2)
    if even != (width, height):
        image = image.crop((0, 0, *even))
    return image


def _find_faces(pixels: np.ndarray) -> list[tuple[tuple[int, int, int, int], float]]:
    """Face boxes ``(x0, y0, x1, y1)`` with detector scores, upsampling once."""
    rects, scores, _ = _face_detector().run(pixels, 1, 0.0)
    return [
        ((rect.left(), rect.top(), rect.right(), rect.bottom()), float(score))
        for rect, score in zip(rects, scores, strict=True)
    ]


def _box_area(box: tuple[int, int, int, int]) -> int:
    x0, y0, x1, y1 = box
    return (x1 - x0 + 1) * (y1 - y0 + 1)


def _choose_face(
    detections: list[tuple[tuple[int, int, int, int], float]],
) -> tuple[tuple[int, int, int, int], float]:
    largest = max(_box_area(box) for box, _ in detections)
    candidates = [d for d in detections if _box_area(d[0]) >= SAME_SIZE_FRACTION * largest]
    return max(candidates, key=lambda detection: detection[1])


def _landmarks(pixels: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    import dlib

    shape = _shape_predictor()(pixels, dlib.rectangle(*box))
    return np.array([[shape.part(i).x, shape.part(i).y] for i in range(NUM_LANDMARKS)])
