"""Mesh-warp presenter renderer: the portrait itself, bent to each frame's landmarks.

A triangle mesh spans the 68 face points, a few forehead points that follow the head, and a
fixed ring of anchors around the face. Each frame moves the face points; every triangle maps
affinely from where it is in the frame back to where it is in the portrait, which gives one dense
backward map, built only inside the ring's bounding box, and one ``cv2.remap``. Neighbouring
triangles share edges, so the warp is continuous: no seams. Outside the ring nothing moves.

Lips and eyelids bend along curves through their landmarks (a mesh point between each pair of
neighbours). The mouth cannot come from the portrait when it opens wider than in the portrait,
so ``storyreel.render.mouth`` paints the inside of the lips. Blinks need no painting: when the
upper-lid points close onto the lower lid, the lid skin above them (with a crease point that
spreads the pull) is stretched down over the eye and the eye's own triangles collapse onto the
lash line. The portrait is expected upright (eyes above mouth), as dlib finds faces.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np
from scipy.spatial import Delaunay

from storyreel.render.base import N_LANDMARKS, RenderBackend, as_landmarks
from storyreel.render.geometry import (
    INNER_LOWER_LIP,
    INNER_UPPER_LIP,
    LEFT_EYE,
    OUTER_LOWER_LIP,
    OUTER_UPPER_LIP,
    RIGHT_EYE,
    RIGID,
    apply_similarity,
    curve_weights,
    eye_distance,
    similarity,
)
from storyreel.render.mouth import MouthPainter

log = logging.getLogger(__name__)

# Brow points whose copies, raised by FOREHEAD_RISE eye distances, pin the forehead to the head.
FOREHEAD_FROM = [17, 19, 21, 22, 24, 26]
FOREHEAD_RISE = 0.55
# Upper/lower pairs that may touch (closed lips, closed eyes); the mesh is laid out with them
# held apart so its topology is valid for closed and open alike.
LIP_PAIRS = [(61, 67), (62, 66), (63, 65)]
EYE_PAIRS = [(37, 41), (38, 40), (43, 47), (44, 46)]
# Outlines the mesh bends along, each as its two lines from corner to corner. A curve point is
# added between neighbouring landmarks, so lips and lids move as curves, not polygons, and every
# outline edge is forced into the mesh (see _force_edges).
OUTLINES = [
    (INNER_UPPER_LIP, INNER_LOWER_LIP),
    (OUTER_UPPER_LIP, OUTER_LOWER_LIP),
    ([36, 37, 38, 39], [39, 40, 41, 36]),
    ([42, 43, 44, 45], [45, 46, 47, 42]),
]
# Upper-lid points and the brow points above them: a point between each pair, 40% of the way up,
# carries part of a blink's pull, so the lid skin stretches smoothly instead of kinking.
CREASES = [(37, 19), (38, 20), (43, 23), (44, 24)]
CREASE_RISE = 0.4
RING_POINTS = 20
MIN_THICKNESS = 1.0  # px: thinner frame triangles are fitted as if this thick (see thicken)

INTERPOLATIONS = {"linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}


def derived_points() -> tuple[np.ndarray, list[list[int]]]:
    """Weights (M, 68) of the mesh's points that follow from the landmarks, and the outlines as
    closed loops of vertex indices (landmarks, and those points numbered from 68)."""
    weights, loops, next_index = [], [], N_LANDMARKS
    for lines in OUTLINES:
        loop = []
        for line in lines:
            weights.append(curve_weights(line, 2, ends=False))
            for landmark in line[:-1]:
                loop += [landmark, next_index]
                next_index += 1
        loops.append(loop)
    identity = np.eye(N_LANDMARKS)
    weights.append(
        [(1 - CREASE_RISE) * identity[lid] + CREASE_RISE * identity[brow] for lid, brow in CREASES]
    )
    return np.vstack(weights), loops


def _separate_pairs(points: np.ndarray, pairs, min_gap: float) -> np.ndarray:
    """Push each (upper, lower) pair apart vertically to at least ``min_gap`` (layout only)."""
    points = points.copy()
    for upper, lower in pairs:
        gap = points[lower, 1] - points[upper, 1]
        if gap < min_gap:
            middle = (points[lower, 1] + points[upper, 1]) / 2
            points[upper, 1] = middle - min_gap / 2
            points[lower, 1] = middle + min_gap / 2
    return points


def _cross(o: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    return float((a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]))


def _segments_cross(p, q, r, s) -> bool:
    """Whether segments pq and rs cross at a point inside both (shared ends do not count)."""
    return (_cross(p, q, r) * _cross(p, q, s) < 0) and (_cross(r, s, p) * _cross(r, s, q) < 0)


def _force_edges(layout: np.ndarray, triangles: list[list[int]], edges) -> list[list[int]]:
    """Flip triangle pairs until each edge in ``edges`` is a mesh edge.

    Delaunay does not promise that the lip and eye outlines are edges; without them a triangle
    could straddle the inner lip line and drag lip texture into the open mouth. The outlines are
    short compared with the spacing of other points, so one or two flips (Lawson) suffice.
    """
    for p, q in edges:
        for _ in range(20):
            if any(p in tri and q in tri for tri in triangles):
                break
            crossing = None
            for i, tri in enumerate(triangles):
                for j in range(3):
                    r, s = tri[j], tri[(j + 1) % 3]
                    if p in (r, s) or q in (r, s):
                        continue
                    if _segments_cross(layout[p], layout[q], layout[r], layout[s]):
                        other = next(
                            (k for k, t in enumerate(triangles) if k != i and r in t and s in t),
                            None,
                        )
                        if other is not None:
                            crossing = (i, other, r, s)
                            break
                if crossing:
                    break
            if crossing is None:
                break
            i, k, r, s = crossing
            x = next(v for v in triangles[i] if v not in (r, s))
            y = next(v for v in triangles[k] if v not in (r, s))
            # Flipping rs to xy is valid only where the quad x-r-y-s is convex.
            if not _segments_cross(layout[x], layout[y], layout[r], layout[s]):
                break
            triangles[i], triangles[k] = [x, r, y], [x, y, s]
        else:
            log.warning("mesh: could not make %d-%d an edge; the warp may smear there", p, q)
    return triangles


def build_mesh(layout: np.ndarray, outlines) -> np.ndarray:
    """Delaunay triangles (T, 3) over ``layout`` with every outline edge forced into the mesh."""
    triangles = Delaunay(layout).simplices.tolist()
    edges = [(ring[i], ring[(i + 1) % len(ring)]) for ring in outlines for i in range(len(ring))]
    triangles = _force_edges(layout, triangles, edges)
    return np.asarray(triangles, dtype=np.int32)


def thicken(destination: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Frame triangles (T, 3, 2), each at least MIN_THICKNESS px across.

    A triangle that collapses in the frame (lips pressed together, an eye shut) still gets a line
    of pixels when rasterised, and an affine fitted to a sliver sends those pixels far outside
    its source triangle (stray specks). Fitted to the triangle pushed open to one pixel, it
    keeps them within the source triangle's reach. The apex moves off the longest edge towards
    the side it lies on in the portrait, so the triangle keeps its orientation.
    """
    corners = destination.copy()
    edges = np.roll(corners, -1, axis=1) - corners  # edge k runs from corner k to k + 1
    longest = np.argmax(np.einsum("tkc,tkc->tk", edges, edges), axis=1)
    rows = np.arange(len(corners))
    a, b = corners[rows, longest], corners[rows, (longest + 1) % 3]
    apex = (longest + 2) % 3
    along = b - a
    length = np.maximum(np.hypot(along[:, 0], along[:, 1]), 1e-9)
    normal = np.stack([-along[:, 1], along[:, 0]], axis=1) / length[:, None]
    height = np.einsum("tc,tc->t", corners[rows, apex] - a, normal)
    src_a, src_b = source[rows, longest], source[rows, (longest + 1) % 3]
    src_along = src_b - src_a
    src_normal = np.stack([-src_along[:, 1], src_along[:, 0]], axis=1)
    src_side = np.einsum("tc,tc->t", source[rows, apex] - src_a, src_normal)
    side = np.where(np.abs(height) > 1e-6, np.sign(height), np.where(src_side < 0, -1.0, 1.0))
    thin = np.abs(height) < MIN_THICKNESS
    push = np.where(thin, side * MIN_THICKNESS - height, 0.0)
    corners[rows, apex] += normal * push[:, None]
    return corners


def backward_affines(destination: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Per triangle, the affine (T, 2, 3) from frame to portrait coordinates.

    ``destination``/``source``: (T, 3, 2) corners in the frame and in the portrait.
    """
    destination = thicken(destination, source)
    d0, s0 = destination[:, 0], source[:, 0]
    d_edges = np.stack([destination[:, 1] - d0, destination[:, 2] - d0], axis=2)  # (T, 2, 2)
    s_edges = np.stack([source[:, 1] - s0, source[:, 2] - s0], axis=2)
    det = d_edges[:, 0, 0] * d_edges[:, 1, 1] - d_edges[:, 0, 1] * d_edges[:, 1, 0]
    # Only a triangle whose corners all coincide is still flat: it maps to its source centre.
    flat = np.abs(det) < 1e-9
    inverse = np.empty_like(d_edges)
    inverse[:, 0, 0] = d_edges[:, 1, 1]
    inverse[:, 0, 1] = -d_edges[:, 0, 1]
    inverse[:, 1, 0] = -d_edges[:, 1, 0]
    inverse[:, 1, 1] = d_edges[:, 0, 0]
    inverse /= np.where(flat, 1.0, det)[:, None, None]
    linear = s_edges @ inverse
    linear[flat] = 0
    offset = s0 - np.einsum("tij,tj->ti", linear, d0)
    offset[flat] = source[flat].mean(axis=1)
    return np.concatenate([linear, offset[:, :, None]], axis=2)


class WarpBackend(RenderBackend):
    """Piecewise-affine warp of the portrait plus a painted mouth interior.

    Options: ``ring_scale`` (how far beyond the face the fixed anchors sit, as a multiple of the
    face's half size), ``interpolation`` (``linear`` or ``cubic``), ``teeth`` (``auto``: the
    portrait's own teeth when it shows them, else painted; ``reference``; ``synthetic``).
    """

    def __init__(
        self,
        presenter: np.ndarray,
        reference_points,
        *,
        ring_scale: float = 1.6,
        interpolation: str = "linear",
        teeth: str = "auto",
        **options,
    ) -> None:
        super().__init__(presenter, reference_points, **options)
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}")
        if ring_scale <= 1.1:
            raise ValueError("ring_scale must be > 1.1: the ring has to lie outside the face")
        self.ring_scale = ring_scale
        self.interpolation = INTERPOLATIONS[interpolation]
        self.teeth = teeth
        self._prepared = False

    def prepare(self) -> None:
        reference = self.reference_points
        scale = eye_distance(reference)
        if scale < 4:
            raise ValueError("reference points: the eyes are too close together to be a face")

        # Forehead: brow points raised along the face's "up" (perpendicular to the eye line).
        eye_line = reference[LEFT_EYE].mean(0) - reference[RIGHT_EYE].mean(0)
        up = np.array([eye_line[1], -eye_line[0]]) / np.linalg.norm(eye_line)
        forehead = reference[FOREHEAD_FROM] + up * FOREHEAD_RISE * scale
        limit = np.array([self.width - 1, self.height - 1], dtype=np.float64)
        forehead = np.clip(forehead, 0, limit)
        face = np.vstack([reference, forehead])

        # The fixed ring: an ellipse around the face, clipped to the image.
        low, high = face.min(0), face.max(0)
        centre, half = (low + high) / 2, (high - low) / 2
        radii = np.maximum(half * self.ring_scale, half + 0.5 * scale)
        angles = np.linspace(0, 2 * np.pi, RING_POINTS, endpoint=False)
        ring = centre + radii * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        ring = np.clip(ring, 0, limit)

        self._forehead_reference = forehead
        self._ring = ring
        self._derived_weights, outlines = derived_points()
        self._source = self.control_points(reference)

        mouth_width = float(np.linalg.norm(reference[64] - reference[60]))
        eye_width = float(np.linalg.norm(reference[39] - reference[36]))
        layout = _separate_pairs(reference, LIP_PAIRS, max(1.0, 0.08 * mouth_width))
        layout = _separate_pairs(layout, EYE_PAIRS, max(1.0, 0.2 * eye_width))
        layout = np.vstack([layout, self._derived_weights @ layout, forehead, ring])
        self._triangles = build_mesh(layout, outlines)
        self._source_corners = self._source[self._triangles]

        x0, y0 = np.floor(ring.min(0)).astype(int)
        x1, y1 = np.ceil(ring.max(0)).astype(int) + 1
        self._box = (slice(y0, y1), slice(x0, x1))
        self._box_origin = np.array([x0, y0], dtype=np.float64)
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        self._grid_x, self._grid_y = xs, ys
        self._labels = np.zeros(xs.shape, dtype=np.uint8)
        if len(self._triangles) > 255:
            raise ValueError(f"mesh has {len(self._triangles)} triangles; labels hold 255")
        # One 256-entry table per affine coefficient; entry 0 is the identity (outside the ring).
        self._affine_tables = np.zeros((6, 256), dtype=np.float32)
        self._affine_tables[:, 0] = (1, 0, 0, 0, 1, 0)
        inside_ring = np.zeros(xs.shape, dtype=np.uint8)
        cv2.fillConvexPoly(inside_ring, np.round(ring - [x0, y0]).astype(np.int32), 1)
        self._inside_ring = inside_ring.astype(bool)

        self._mouth = MouthPainter(self.presenter, reference, teeth=self.teeth)
        self._prepared = True

    def control_points(self, points: np.ndarray) -> np.ndarray:
        """Where the mesh's vertices go in a frame with these 68 landmarks."""
        z, t = similarity(self.reference_points[RIGID], points[RIGID])
        forehead = apply_similarity(z, t, self._forehead_reference)
        return np.vstack([points, self._derived_weights @ points, forehead, self._ring])

    def backward_map(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """map_x, map_y over the ring's bounding box: where each frame pixel comes from."""
        destination = self.control_points(points)
        frame_corners = destination[self._triangles]
        affines = backward_affines(frame_corners, self._source_corners)

        # Label each pixel with its triangle, 1..T (0: outside the ring, not warped). Slivers are
        # drawn first, so a pixel on an edge they share goes to the fuller neighbour.
        side1 = frame_corners[:, 1] - frame_corners[:, 0]
        side2 = frame_corners[:, 2] - frame_corners[:, 0]
        area = np.abs(side1[:, 0] * side2[:, 1] - side1[:, 1] * side2[:, 0])
        labels = self._labels
        labels.fill(0)
        corners = np.round((frame_corners - self._box_origin) * 16).astype(np.int32)  # 1/16 px
        for index in np.argsort(area):
            cv2.fillPoly(labels, [corners[index]], int(index) + 1, shift=4)
        # Rounding can still leave a pixel between collapsed triangles unlabelled; it takes a
        # neighbour's triangle rather than showing the unwarped portrait.
        holes = (labels == 0) & self._inside_ring
        if holes.any():
            labels[holes] = cv2.dilate(labels, np.ones((3, 3), np.uint8))[holes]

        # Each pixel's affine through 8-bit lookup tables: far faster than numpy indexing.
        self._affine_tables[:, 1 : len(affines) + 1] = affines.reshape(-1, 6).T
        a, b, c, d, e, f = (cv2.LUT(labels, table) for table in self._affine_tables)
        x, y = self._grid_x, self._grid_y
        map_x = a * x
        map_x += b * y
        map_x += c
        map_y = d * x
        map_y += e * y
        map_y += f
        return map_x, map_y

    def render(self, points: np.ndarray) -> np.ndarray:
        if not self._prepared:
            raise RuntimeError("WarpBackend.render called before prepare()")
        points = as_landmarks(points, label="frame points")
        frame = self.presenter.copy()
        if not np.isfinite(points).all():
            return frame  # no face in this frame's animation: show the portrait as it is
        # Fixed-point maps: converting first and remapping is faster than remapping floats.
        map_xy, map_fraction = cv2.convertMaps(*self.backward_map(points), cv2.CV_16SC2)
        frame[self._box] = cv2.remap(
            self.presenter,
            map_xy,
            map_fraction,
            self.interpolation,
            borderMode=cv2.BORDER_REPLICATE,
        )
        self._mouth.paint(frame, points)
        return frame
