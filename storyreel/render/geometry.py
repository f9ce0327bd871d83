"""Face geometry shared by the renderers: landmark groups, face scale, head motion, lip curves."""

from __future__ import annotations

import numpy as np

from storyreel.render.base import N_LANDMARKS

RIGHT_EYE = [36, 37, 38, 39, 40, 41]  # the subject's right eye: on the left of the image
LEFT_EYE = [42, 43, 44, 45, 46, 47]
# Lip lines from corner to corner, as the iBUG 68-point scheme numbers them.
OUTER_UPPER_LIP = [48, 49, 50, 51, 52, 53, 54]
OUTER_LOWER_LIP = [54, 55, 56, 57, 58, 59, 48]
INNER_UPPER_LIP = [60, 61, 62, 63, 64]
INNER_LOWER_LIP = [64, 65, 66, 67, 60]
# Points that stay put while the face talks or blinks: they carry head motion alone.
RIGID = [27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 39, 42, 45]


def eye_distance(points: np.ndarray) -> float:
    """Distance between the eye centres: the face's scale."""
    return float(np.linalg.norm(points[LEFT_EYE].mean(0) - points[RIGHT_EYE].mean(0)))


def similarity(source: np.ndarray, target: np.ndarray) -> tuple[complex, complex]:
    """Least-squares rotation+scale ``z`` and shift ``t`` with target ~ z * source + t.

    Points are treated as complex numbers, which makes the 2-D similarity fit closed-form.
    """
    a = source[:, 0] + 1j * source[:, 1]
    b = target[:, 0] + 1j * target[:, 1]
    a_mean, b_mean = a.mean(), b.mean()
    a0, b0 = a - a_mean, b - b_mean
    z = complex(np.vdot(a0, b0) / max(np.vdot(a0, a0).real, 1e-12))
    return z, complex(b_mean - z * a_mean)


def apply_similarity(z: complex, t: complex, points: np.ndarray) -> np.ndarray:
    moved = z * (points[:, 0] + 1j * points[:, 1]) + t
    return np.stack([moved.real, moved.imag], axis=1)


def curve_weights(chain: list[int], per_segment: int, *, ends: bool = True) -> np.ndarray:
    """A (samples, 68) matrix: ``weights @ points`` samples a smooth curve through ``chain``.

    Uniform Catmull-Rom between consecutive landmarks, ``per_segment`` samples per segment
    starting at its first landmark; the curve passes through every landmark. At the two ends
    the tangent is that of the parabola through the last three landmarks, so a lip line leaves
    the mouth corner already bending the way the lip does (round), not along a straight chord.
    ``ends=False`` leaves the landmarks themselves out (only the points in between).
    """
    identity = np.eye(N_LANDMARKS)
    control = [identity[i] for i in chain]
    first, last = control[0], control[-1]
    # Phantom points beyond each end that give the parabolic end tangent.
    before = 3 * first - 3 * control[1] + control[2]
    after = 3 * last - 3 * control[-2] + control[-3]
    control = [before, *control, after]
    rows = []
    for i in range(1, len(control) - 2):
        p0, p1, p2, p3 = control[i - 1 : i + 3]
        for step in range(0 if ends else 1, per_segment):
            t = step / per_segment
            rows.append(
                0.5
                * (
                    (-(t**3) + 2 * t**2 - t) * p0
                    + (3 * t**3 - 5 * t**2 + 2) * p1
                    + (-3 * t**3 + 4 * t**2 + t) * p2
                    + (t**3 - t**2) * p3
                )
            )
    if ends:
        rows.append(last)
    return np.asarray(rows)
