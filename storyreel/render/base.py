"""What every render backend is: landmarks in, RGB frames out.

A backend is built once per shard from the presenter portrait and its reference landmarks. Its
``prepare()`` computes whatever does not change from frame to frame; then ``render()`` turns each
frame's 68 landmarks into one RGB image of the presenter's size. Backends know nothing about
files, shards or PNG: ``storyreel.render.render_shard`` does that for all of them alike.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

N_LANDMARKS = 68


def as_landmarks(points, *, label: str) -> np.ndarray:
    """``points`` as a float64 (68, 2) array of pixel coordinates, or a ValueError naming it."""
    array = np.asarray(points, dtype=np.float64)
    if array.shape != (N_LANDMARKS, 2):
        raise ValueError(f"{label}: expected {N_LANDMARKS} (x, y) points, got shape {array.shape}")
    return array


class RenderBackend(ABC):
    """A presenter renderer; subclasses register under a name in ``storyreel.render``."""

    def __init__(self, presenter: np.ndarray, reference_points, **options) -> None:
        presenter = np.asarray(presenter)
        if presenter.ndim != 3 or presenter.shape[2] != 3 or presenter.dtype != np.uint8:
            raise ValueError(
                f"presenter: expected an RGB uint8 image, got {presenter.dtype} {presenter.shape}"
            )
        if options:
            raise ValueError(f"{type(self).__name__}: unknown options {sorted(options)}")
        self.presenter = np.ascontiguousarray(presenter)
        self.reference_points = as_landmarks(reference_points, label="reference points")
        self.height, self.width = presenter.shape[:2]

    @abstractmethod
    def prepare(self) -> None:
        """Precompute everything shared by all frames; called once before ``render``."""

    @abstractmethod
    def render(self, points: np.ndarray) -> np.ndarray:
        """One frame: an RGB uint8 (height, width, 3) image for these 68 landmarks."""
