"""The inside of the mouth where the lips part further than in the portrait.

Warping alone would stretch whatever the portrait shows between the lips (teeth, or a closed lip
line) into a tall smear. Instead, inside the frame's inner-lip outline (points 60-67) this paints
a dark cavity, the upper teeth hanging from the upper lip (the portrait's own teeth where it shows
them, moved but not stretched; otherwise a painted band), and, as the mouth opens wide, the tongue
and a hint of the lower teeth. Everything is laid out in mouth coordinates: ``u`` runs 0..1 from
inner corner 60 to 64, ``v`` is the distance in pixels towards the chin, so head tilt and mouth
width come for free. Edges are feathered analytically in those coordinates (no aliasing).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from storyreel.render.geometry import INNER_LOWER_LIP, INNER_UPPER_LIP, curve_weights

# The inner lip lines as smooth curves from corner 60 to corner 64, four samples per segment
# (the warp mesh bends the lips through the middle sample of each segment, so both agree).
UPPER_CURVE = curve_weights(INNER_UPPER_LIP, 4)
LOWER_CURVE = curve_weights(INNER_LOWER_LIP[::-1], 4)
GAP_PAIRS = [(61, 67), (62, 66), (63, 65)]

# RGB, 0..255. The cavity is darkest just under the teeth and warms towards the tongue.
CAVITY_TOP = np.array([22, 8, 9], dtype=np.float32)
CAVITY_BOTTOM = np.array([74, 28, 29], dtype=np.float32)
TONGUE = np.array([146, 64, 64], dtype=np.float32)
PAINTED_TEETH = np.array([226, 218, 204], dtype=np.float32)
LOWER_TEETH = np.array([172, 154, 142], dtype=np.float32)  # in the shadow of the upper lip
PAINTED_TEETH_LENGTH = 0.14  # visible upper teeth at the middle, as a fraction of mouth width
# Opening (lip gap / mouth width) beyond the portrait's at which the painted interior starts and
# where it is fully on; the portrait's own mouth shows unchanged up to the first.
FADE_IN = (0.01, 0.06)


def smoothstep(edge0: float, edge1: float, x):
    t = np.clip((np.asarray(x, dtype=np.float32) - edge0) / (edge1 - edge0), 0, 1)
    return t * t * (3 - 2 * t)


@dataclass(frozen=True)
class MouthAxes:
    """Mouth coordinates of one face: origin at inner corner 60, ``along`` towards 64."""

    origin: np.ndarray
    along: np.ndarray
    down: np.ndarray
    width: float

    @classmethod
    def of(cls, points: np.ndarray) -> MouthAxes:
        span = points[64] - points[60]
        width = float(np.hypot(*span))
        along = span / width if width > 0 else np.array([1.0, 0.0])
        down = np.array([-along[1], along[0]])  # image y points down, so this faces the chin
        return cls(points[60].astype(np.float64), along, down, width)

    def local(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        offset = xy - self.origin
        return offset @ self.along / self.width, offset @ self.down

    def lip_line(self, points: np.ndarray, curve: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Knots (u, v) of an inner lip curve, u non-decreasing so it can be interpolated."""
        u, v = self.local(curve @ points)
        return np.maximum.accumulate(u), v

    def openness(self, points: np.ndarray) -> float:
        """Lip gap across the middle of the mouth, as a fraction of the mouth's width."""
        gaps = [(points[lower] - points[upper]) @ self.down for upper, lower in GAP_PAIRS]
        return max(float(np.mean(gaps)), 0.0) / max(self.width, 1e-6)


class MouthPainter:
    """Paints the mouth interior of frames of one presenter portrait."""

    def __init__(self, presenter: np.ndarray, reference_points: np.ndarray, *, teeth="auto"):
        if teeth not in ("auto", "reference", "synthetic"):
            raise ValueError("teeth must be 'auto', 'reference' or 'synthetic'")
        self.presenter = presenter
        self.reference_points = reference_points
        self.axes = MouthAxes.of(reference_points)
        self.openness = self.axes.openness(reference_points)
        self.upper_line = self.axes.lip_line(reference_points, UPPER_CURVE)
        self.lower_line = self.axes.lip_line(reference_points, LOWER_CURVE)
        self.height, self.width = presenter.shape[:2]
        shows_teeth = self._portrait_shows_teeth()
        self.reference_teeth = teeth == "reference" or (teeth == "auto" and shows_teeth)

    def _inside_lips(self) -> np.ndarray:
        mask = np.zeros((self.height, self.width), dtype=np.uint8)
        cv2.fillPoly(mask, [np.round(self.reference_points[60:68]).astype(np.int32)], 1)
        return cv2.erode(mask, np.ones((3, 3), np.uint8)).astype(bool)

    def _portrait_shows_teeth(self) -> bool:
        """Whether the portrait's lips part on something light enough to be teeth."""
        if self.openness < 0.08:
            return False
        inside = self._inside_lips()
        if inside.sum() < 6:
            return False
        luma = cv2.cvtColor(self.presenter, cv2.COLOR_RGB2GRAY)
        lips_mask = np.zeros(inside.shape, dtype=np.uint8)
        cv2.fillPoly(lips_mask, [np.round(self.reference_points[48:60]).astype(np.int32)], 1)
        lips = lips_mask.astype(bool) & ~inside
        return float(luma[inside].mean()) > max(110.0, float(luma[lips].mean()) + 15)

    def paint(self, frame: np.ndarray, points: np.ndarray) -> None:
        """Paint the interior into ``frame`` (RGB uint8, in place) for these landmarks."""
        axes = MouthAxes.of(points)
        if axes.width < 2:
            return
        opening = axes.openness(points)
        fade_start, fade_end = (self.openness + margin for margin in FADE_IN)
        strength = float(smoothstep(fade_start, fade_end, opening))
        if strength <= 0:
            return
        feather = max(0.7, axes.width / 45)
        low = np.floor(points[60:68].min(0) - 4 * feather).astype(int)
        high = np.ceil(points[60:68].max(0) + 4 * feather).astype(int) + 1
        x0, y0 = np.maximum(low, 0)
        x1, y1 = np.minimum(high, [self.width, self.height])
        if x1 <= x0 or y1 <= y0:
            return
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        u, v = axes.local(np.stack([xs, ys], axis=-1))
        upper = np.interp(u, *axes.lip_line(points, UPPER_CURVE))
        lower = np.interp(u, *axes.lip_line(points, LOWER_CURVE))
        depth = v - upper  # pixels below the upper inner lip
        gap = np.maximum(lower - upper, 1.0)
        across = np.clip(2 * u - 1, -1, 1)  # -1 .. 1 from corner to corner

        def soft(distance):  # 0 outside, 1 inside, feathered over about one feather width
            return np.clip(distance / feather + 0.5, 0, 1)

        between_corners = soft(u * axes.width) * soft((1 - u) * axes.width)
        inside = soft(depth) * soft(lower - v) * between_corners

        # Cavity: dark under the teeth, warmer below, darker towards the corners.
        down_the_gap = np.clip(depth / gap, 0, 1)[..., None]
        corner_shade = (1 - 0.55 * across**2)[..., None]
        interior = (CAVITY_TOP + (CAVITY_BOTTOM - CAVITY_TOP) * down_the_gap) * corner_shade

        # Tongue: a soft, dim mound resting on the lower lip, only when the mouth is open wide.
        tongue_on = 0.7 * float(smoothstep(0.25, 0.55, opening))
        if tongue_on > 0:
            rise = (lower - v) / (0.42 * gap)  # 0 at the lower lip, 1 at the tongue's top
            reach = (across / 0.7) ** 2 + rise**2
            tongue = (np.clip((1 - reach) * 2.5, 0, 1) * tongue_on)[..., None]
            lit = (0.6 + 0.4 * np.clip(rise, 0, 1))[..., None]  # its tip catches the light
            interior += (TONGUE * lit * corner_shade - interior) * tongue

        # Lower teeth: the edges of the incisors just above the middle of the lower lip.
        lower_teeth_on = float(smoothstep(0.35, 0.6, opening))
        if lower_teeth_on > 0:
            length = 0.04 * axes.width * lower_teeth_on
            band = soft(length - (lower - v)) * np.clip(1 - (across / 0.38) ** 2, 0, 1)
            interior += (LOWER_TEETH - interior) * (0.6 * band)[..., None]

        teeth, length = self._upper_teeth(axes, points, u, upper, depth, across)
        shown = soft(length - depth)[..., None]
        interior += (teeth - interior) * shown

        # The lower lip curls into the mouth: its inner rim falls into shadow as the mouth opens.
        below = v - lower
        rim = soft(below + feather) * np.clip(1 - below / (3 * feather), 0, 1) * between_corners
        shade = (1 - 0.22 * strength * rim)[..., None]

        alpha = (inside * strength)[..., None]
        region = frame[y0:y1, x0:x1]
        painted = region * shade * (1 - alpha) + interior * alpha
        region[:] = np.clip(painted + 0.5, 0, 255).astype(np.uint8)

    def _upper_teeth(self, axes: MouthAxes, points, u, upper, depth, across):
        """Upper-teeth colour at each pixel and how far below the upper lip they reach."""
        scale = self.axes.width / axes.width  # portrait pixels per frame pixel
        if self.reference_teeth:
            # The portrait's teeth, hanging from the upper lip at their portrait length.
            ref_upper = np.interp(u, *self.upper_line)
            ref_lower = np.interp(u, *self.lower_line)
            source_v = ref_upper + depth * scale
            source = (
                self.axes.origin
                + (u * self.axes.width)[..., None] * self.axes.along
                + source_v[..., None] * self.axes.down
            ).astype(np.float32)
            colour = cv2.remap(
                self.presenter,
                source[..., 0],
                source[..., 1],
                cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_REPLICATE,
            ).astype(np.float64)
            return colour, 0.92 * np.maximum(ref_lower - ref_upper, 0) / scale
        # Painted teeth: their biting edge is a smooth arch (a parabola fitted to the upper lip
        # line, so the lip's bow does not show in it), they are shadowed just under the lip and
        # sink into the cavity's darkness towards the corners, as real teeth do.
        knots_u, knots_v = axes.lip_line(points, UPPER_CURVE)
        arch = np.polyval(np.polyfit(2 * knots_u - 1, knots_v, 2), across)
        full_length = PAINTED_TEETH_LENGTH * axes.width
        length = arch - upper + full_length * np.sqrt(np.clip(1 - (across / 0.85) ** 2, 0, 1))
        under_lip = np.clip(depth / (0.3 * full_length), 0, 1)
        lit = PAINTED_TEETH * (0.8 + 0.2 * under_lip)[..., None]
        into_shadow = (0.85 * np.clip((np.abs(across) - 0.3) / 0.6, 0, 1) ** 1.5)[..., None]
        return lit + (CAVITY_TOP - lit) * into_shadow, length
