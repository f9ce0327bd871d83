"""Per-frame face landmarks for the presenter (``landmarks/frames.npz`` + ``visemes.json``).

Every phone of ``phonemes.json`` maps to a viseme, a target mouth shape described by four
articulation parameters (lip gap, jaw drop, mouth width, lip rounding), in units of the face's
inter-ocular distance so that one table fits any portrait. The per-frame mouth is a blend of
those targets:

- *co-articulation*: each phone's target holds with a dominance (vowels and lip consonants
  strongly, tongue consonants such as T or K weakly, so the surrounding vowels show through
  them) over a time kernel that reaches further ahead than behind, so the mouth moves toward
  the next shape before its sound starts (anticipation) and lets go of the last one soon after;
- *closures*: lip consonants (M, B, P, and F/V against the upper teeth) and silences longer
  than ``rest_after`` cap the lip gap and jaw with a smooth ramp, so the lips really meet at an
  M between two open vowels, however short it is;
- *natural life*: blinks every few seconds, a slow small head motion, a brow raise at some
  phrase onsets.

Everything random comes from a generator seeded by a hash of the story, so a story always
animates the same way. Frame ``k`` shows time ``k / fps``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from storyreel.timeline import frame_count as video_frame_count

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MouthShape:
    """A viseme's target, in inter-ocular distances (IOD) unless said otherwise."""

    gap: float  # inner lips apart at the mouth's centre; 0 = lips meet
    jaw: float  # chin drop below the portrait's chin
    width: float  # relative change of mouth width: + spread, - narrowed
    rounding: float  # lip protrusion / rounding, 0..1
    dominance: float  # how strongly the shape holds against its neighbours' shapes
    seal: bool = False  # gap and jaw must come down to this shape's at the phone's centre


VISEMES: dict[str, MouthShape] = {
    "rest": MouthShape(gap=0.0, jaw=0.0, width=0.0, rounding=0.0, dominance=1.0, seal=True),
    "MBP": MouthShape(gap=0.0, jaw=0.04, width=-0.03, rounding=0.0, dominance=1.0, seal=True),
    "FV": MouthShape(gap=0.03, jaw=0.06, width=0.0, rounding=0.0, dominance=0.9, seal=True),
    "TH": MouthShape(gap=0.09, jaw=0.08, width=0.03, rounding=0.0, dominance=0.6),
    "AA": MouthShape(gap=0.42, jaw=0.28, width=0.0, rounding=0.0, dominance=1.0),
    "EH": MouthShape(gap=0.28, jaw=0.18, width=0.08, rounding=0.0, dominance=0.9),
    "OW": MouthShape(gap=0.30, jaw=0.20, width=-0.20, rounding=0.7, dominance=1.0),
    "UW": MouthShape(gap=0.10, jaw=0.08, width=-0.30, rounding=1.0, dominance=1.0),
    "IY": MouthShape(gap=0.10, jaw=0.07, width=0.14, rounding=0.0, dominance=0.9),
    "ER": MouthShape(gap=0.12, jaw=0.10, width=-0.12, rounding=0.5, dominance=0.7),
    "LDT": MouthShape(gap=0.10, jaw=0.08, width=0.03, rounding=0.0, dominance=0.35),
    "SH": MouthShape(gap=0.10, jaw=0.08, width=-0.15, rounding=0.6, dominance=0.8),
    "KG": MouthShape(gap=0.14, jaw=0.12, width=0.02, rounding=0.0, dominance=0.3),
}

# ARPAbet (39 phones, no stress) -> viseme.
PHONE_VISEMES: dict[str, str] = {
    **dict.fromkeys(["M", "B", "P"], "MBP"),
    **dict.fromkeys(["F", "V"], "FV"),
    **dict.fromkeys(["TH", "DH"], "TH"),
    **dict.fromkeys(["AA", "AH", "AY", "AW"], "AA"),
    **dict.fromkeys(["AE", "EH", "EY"], "EH"),
    **dict.fromkeys(["AO", "OW", "OY"], "OW"),
    **dict.fromkeys(["UW", "UH", "W"], "UW"),
    **dict.fromkeys(["IY", "IH"], "IY"),
    **dict.fromkeys(["R", "ER"], "ER"),
    **dict.fromkeys(["L", "D", "T", "N", "S", "Z"], "LDT"),
    **dict.fromkeys(["CH", "JH", "SH", "ZH"], "SH"),
    **dict.fromkeys(["K", "G", "NG", "HH", "Y"], "KG"),
}
# Aligner silence/noise markers that may reach the timeline from other aligners.
SILENCE_PHONES = frozenset(["", "SIL", "SP", "SPN", "NSN", "OOV"])
# A phone nobody knows gets a neutral, slightly open consonant shape.
UNKNOWN_VISEME = "KG"

# The widest lip gap of the table: mouth_open = 1.
WIDEST_GAP = max(shape.gap for shape in VISEMES.values())
# Pauses shorter than rest_after keep the neighbouring shapes, relaxing toward rest a little.
SHORT_PAUSE_DOMINANCE = 0.3

# The articulation track is built on a fine time grid, independent of the frame rate, so that
# phones shorter than a frame still count, and sampled at the frame times.
GRID_STEP = 0.0025
# Time for the lips to close into (and open out of) a closure.
CLOSURE_RAMP = 0.06

# Mouth geometry (fractions, and IOD). The upper lip takes this share of a change in lip gap,
# the lower lip and jaw the rest.
UPPER_LIP_SHARE = 0.2
# The inner lips' gap at their side points relative to the centre: an open mouth is an oval,
# a rounded one nearly a circle.
SIDE_GAP_OPEN = 0.75
SIDE_GAP_ROUND = 0.9
POUT = 0.03  # outer lips pushed apart by full rounding
ROUND_CORNER_PULL = 0.04  # inner corners drawn in by full rounding
# How much each jaw point 5..11 follows the chin.
JAW_FOLLOW = np.array([0.3, 0.6, 0.85, 1.0, 0.85, 0.6, 0.3])

# Life. Head motion: in-plane rotation (radians) about the neck and translation (IOD), each the
# sum of a few slow sinusoids with random frequencies and phases.
HEAD_ROTATION = math.radians(1.0)
HEAD_SHIFT = (0.05, 0.04)  # sideways, up-down
HEAD_FREQUENCIES = (0.05, 0.35)  # Hz
HEAD_COMPONENTS = 3
NECK_BELOW_CHIN = 0.6  # IOD; the pivot of the head's rotation
# Blinks: the upper lid travels this share of the eye's height, the lower lid the rest, so the
# lids meet; closing takes this share of the blink, opening (slower) the rest.
UPPER_LID_SHARE = 0.75
BLINK_CLOSING_SHARE = 0.4
EYELID_PAIRS = np.array([[37, 41], [38, 40], [43, 47], [44, 46]])  # upper, lower
# Brow raise at phrase onsets (after a pause): probability, height (IOD) and time course.
BROW_RAISE_CHANCE = 0.5
BROW_RAISE_HEIGHT = 0.05
BROW_RAISE_WIDTH = 0.18  # s, Gaussian sigma
BROW_RAISE_DELAY = 0.1  # s after the phrase onset


@dataclass(frozen=True)
class Timeline:
    """The phones of phonemes.json, cleaned up, with their visemes."""

    phones: list[str]
    visemes: list[str]
    words: list[int | None]
    starts: np.ndarray
    ends: np.ndarray


@dataclass(frozen=True)
class FaceFrame:
    """The face's own axes in image pixels: ``ex`` along the eyes, ``ey`` down the face."""

    origin: np.ndarray  # the mouth's centre
    ex: np.ndarray
    ey: np.ndarray
    iod: float  # inter-ocular distance, pixels

    def to_face(self, points: np.ndarray) -> np.ndarray:
        """Image pixels -> face coordinates in IOD."""
        relative = np.asarray(points, dtype=float) - self.origin
        return np.stack([relative @ self.ex, relative @ self.ey], axis=-1) / self.iod

    def offsets_to_image(self, offsets: np.ndarray) -> np.ndarray:
        """Offsets in face coordinates (IOD) -> offsets in image pixels."""
        return self.iod * (offsets[..., :1] * self.ex + offsets[..., 1:] * self.ey)


def animate(
    phonemes: dict,
    reference: dict,
    *,
    out_npz: Path,
    out_visemes: Path,
    **options,
) -> dict:
    """Animate the presenter's landmarks for a story; write frames.npz and visemes.json.

    ``options`` are :func:`animate_track`'s (fps, duration, seed_text and):
    - ``anticipation`` / ``carryover``: how far (s, a Gaussian's sigma) a phone's shape reaches
      ahead of it and lingers after it;
    - ``rest_after``: pauses at least this long (s) close the mouth;
    - ``articulation``: scales how far the mouth moves (1 = the viseme table);
    - ``blink_interval``: (shortest, longest) seconds between blinks; ``blink_duration``: s;
    - ``head_motion``, ``brow_raise``: scale the default motion (0 = none).

    Returns the visemes.json dict.
    """
    track = animate_track(phonemes, reference, **options)
    fps = options["fps"]
    out_npz = Path(out_npz)
    out_npz.parent.mkdir(parents=True, exist_ok=True)
    tmp_npz = out_npz.with_name(out_npz.name + ".tmp")
    with open(tmp_npz, "wb") as handle:  # a file object: savez would append ".npz" to a name
        np.savez_compressed(
            handle,
            points=track["points"],
            mouth_open=track["mouth_open"],
            fps=np.float64(fps),
        )
    tmp_npz.replace(out_npz)

    summary = {
        "fps": fps,
        "frames": len(track["points"]),
        "visemes": track["visemes"],
        "blinks": track["blinks"],
    }
    out_visemes = Path(out_visemes)
    out_visemes.parent.mkdir(parents=True, exist_ok=True)
    tmp_json = out_visemes.with_name(out_visemes.name + ".tmp")
    tmp_json.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    tmp_json.replace(out_visemes)
    log.info(
        "%d frames at %g fps, %d phones, %d blinks",
        summary["frames"],
        fps,
        len(summary["visemes"]),
        len(summary["blinks"]),
    )
    return summary


def animate_track(
    phonemes: dict,
    reference: dict,
    *,
    fps: float,
    duration: float,
    seed_text: str,
    anticipation: float = 0.045,
    carryover: float = 0.025,
    rest_after: float = 0.25,
    articulation: float = 1.0,
    blink_interval: Sequence[float] = (2.0, 6.0),
    blink_duration: float = 0.15,
    head_motion: float = 1.0,
    brow_raise: float = 1.0,
) -> dict:
    """The animation in memory: ``points`` (F, 68, 2) float32, ``mouth_open`` (F,) float32,
    the per-frame articulation parameters, ``visemes`` and ``blinks`` (visemes.json lists).

    Same arguments as :func:`animate`, without the output paths.
    """
    if fps <= 0 or duration < 0:
        raise ValueError(f"need fps > 0 and duration >= 0, got fps={fps}, duration={duration}")
    shortest, longest = blink_interval
    if not 0 < shortest <= longest:
        raise ValueError(f"blink_interval must be (shortest, longest) > 0, got {blink_interval}")
    neutral = np.asarray(reference["points"], dtype=float)
    if neutral.shape != (68, 2):
        raise ValueError(f"reference points must be 68 (x, y) pairs, got shape {neutral.shape}")
    face = face_frame(neutral)

    frame_count = video_frame_count(duration, fps)
    times = np.arange(frame_count) / fps
    timeline = build_timeline(phonemes)
    blink_rng, head_rng, brow_rng = story_generators(seed_text, 3)

    params = articulation_track(
        timeline,
        times,
        fps=fps,
        duration=duration,
        anticipation=anticipation,
        carryover=carryover,
        rest_after=rest_after,
    )
    gap = params["gap"] * articulation
    jaw = params["jaw"] * articulation
    width = params["width"] * articulation
    rounding = np.clip(params["rounding"] * articulation, 0.0, 1.0)

    offsets = mouth_offsets(face.to_face(neutral), gap, jaw, width, rounding)
    brow = brow_raise * brow_track(brow_rng, times, phrase_onsets(timeline, rest_after))
    offsets[:, 17:27, 1] -= brow[:, None]
    points = neutral + face.offsets_to_image(offsets)

    closure, blink_starts = blink_track(
        blink_rng, times, fps=fps, interval=(shortest, longest), blink_duration=blink_duration
    )
    close_eyelids(points, closure)

    angle, shift = head_track(head_rng, times, scale=head_motion)
    pivot = neutral[8] + NECK_BELOW_CHIN * face.iod * face.ey
    points = move_head(points, angle, face.offsets_to_image(shift), pivot)

    widest = WIDEST_GAP * articulation if articulation > 0 else 1.0
    return {
        "points": points.astype(np.float32),
        "mouth_open": np.clip(gap / widest, 0.0, 1.0).astype(np.float32),
        "gap": gap,
        "jaw": jaw,
        "width": width,
        "rounding": rounding,
        "eyelid_closure": closure,
        "visemes": [
            {
                "viseme": viseme,
                "start": round(float(start), 3),
                "end": round(float(end), 3),
                "phone": phone,
                "word": word,
            }
            for viseme, start, end, phone, word in zip(
                timeline.visemes,
                timeline.starts,
                timeline.ends,
                timeline.phones,
                timeline.words,
                strict=True,
            )
        ],
        "blinks": [round(float(start), 3) for start in blink_starts],
    }


def story_generators(seed_text: str, count: int) -> list[np.random.Generator]:
    """Independent generators seeded by a hash of the story (never the global state).

    One per kind of motion, so that e.g. a longer story keeps the same head motion where the
    two overlap in time even though it has more blinks.
    """
    digest = hashlib.sha256(seed_text.encode("utf-8")).digest()
    seed = np.random.SeedSequence(int.from_bytes(digest[:16], "little"))
    return [np.random.default_rng(child) for child in seed.spawn(count)]


def face_frame(points: np.ndarray) -> FaceFrame:
    left_eye = points[36:42].mean(axis=0)
    right_eye = points[42:48].mean(axis=0)
    iod = float(np.linalg.norm(right_eye - left_eye))
    if not iod > 1.0:
        raise ValueError("reference landmarks have the eyes on top of each other")
    ex = (right_eye - left_eye) / iod
    ey = np.array([-ex[1], ex[0]])  # ex turned a quarter toward image-down
    return FaceFrame(origin=points[60:68].mean(axis=0), ex=ex, ey=ey, iod=iod)


def viseme_of(phone: str) -> str:
    phone = phone.rstrip("012").upper()
    if phone in SILENCE_PHONES:
        return "rest"
    return PHONE_VISEMES.get(phone, UNKNOWN_VISEME)


def build_timeline(phonemes: dict) -> Timeline:
    """The phones in time order, overlaps trimmed, each with its viseme."""
    phones = sorted(phonemes.get("phones", []), key=lambda phone: float(phone["start"]))
    starts = np.array([float(phone["start"]) for phone in phones])
    ends = np.array([float(phone["end"]) for phone in phones])
    if len(phones):
        # The contract says phones never overlap; a slightly sloppy timeline must not break
        # the search below, so each phone ends at the latest where the next begins.
        ends[:-1] = np.minimum(ends[:-1], starts[1:])
        ends = np.maximum(ends, starts)
    names = [phone["phone"].rstrip("012").upper() for phone in phones]
    unknown = sorted(set(names) - set(PHONE_VISEMES) - SILENCE_PHONES)
    if unknown:
        log.warning("phones %s are not ARPAbet; shown as a neutral mouth", unknown)
    return Timeline(
        phones=names,
        visemes=[viseme_of(name) for name in names],
        words=[phone.get("word") for phone in phones],
        starts=starts,
        ends=ends,
    )


def articulation_track(
    timeline: Timeline,
    times: np.ndarray,
    *,
    fps: float,
    duration: float,
    anticipation: float,
    carryover: float,
    rest_after: float,
) -> dict[str, np.ndarray]:
    """Per-frame gap, jaw, width and rounding (IOD / fractions) at ``times``."""
    reach = 4.0 * max(anticipation, carryover, GRID_STEP)
    grid = np.arange(-reach, max(duration, times[-1] if len(times) else 0.0) + reach, GRID_STEP)
    names = list(VISEMES)
    table = np.array([[s.gap, s.jaw, s.width, s.rounding, s.dominance] for s in VISEMES.values()])
    segment, inside = _segment_of(grid, timeline)
    pause_starts, pause_ends = _pauses(timeline)
    long_pauses = pause_ends - pause_starts >= rest_after
    # Grid times between phone `segment` and the next are in pause `segment + 1`.
    in_long_pause = ~inside & long_pauses[segment + 1]

    viseme_index = np.full(len(grid), names.index("rest"))
    phone_viseme = np.array([names.index(v) for v in timeline.visemes], dtype=int)
    viseme_index[inside] = phone_viseme[segment[inside]]
    targets = table[viseme_index, :4]
    dominance = table[viseme_index, 4]
    dominance[~inside & ~in_long_pause] = SHORT_PAUSE_DOMINANCE

    # Blend: a dominance-weighted average of the targets under an asymmetric kernel.
    # correlate1d's output at t sums kernel[offset] * value[t + offset]: positive offsets look
    # ahead in time, so the anticipation side is the positive one.
    half = int(math.ceil(reach / GRID_STEP))
    offsets = np.arange(-half, half + 1) * GRID_STEP
    sigma = np.where(offsets > 0, max(anticipation, 1e-6), max(carryover, 1e-6))
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    weighted = np.column_stack([targets * dominance[:, None], dominance])
    blended = ndimage.correlate1d(weighted, kernel, axis=0, mode="nearest")
    params = blended[:, :4] / blended[:, 4:]

    # Closures: the lip gap and jaw come down to the closing shape's values around its phone's
    # centre.
    # The hold lasts at least a frame so that some frame shows it at any frame rate.
    hold = 0.5 / fps + 2 * GRID_STEP
    starts, ends = timeline.starts, timeline.ends
    for name, shape in VISEMES.items():
        if not shape.seal:
            continue
        if name == "rest":
            # Held inside long pauses, leaving time to close after the last phone and to open
            # (anticipating) before the next.
            first = pause_starts[long_pauses] + CLOSURE_RAMP
            last = pause_ends[long_pauses] - anticipation - CLOSURE_RAMP
            intervals = np.column_stack([first, last])
        else:
            chosen = np.array([v == name for v in timeline.visemes], dtype=bool)
            centre = 0.5 * (starts[chosen] + ends[chosen])
            half_hold = np.maximum(0.25 * (ends[chosen] - starts[chosen]), hold)
            intervals = np.column_stack([centre - half_hold, centre + half_hold])
        closure = _closure_strength(grid, intervals)
        for column, ceiling in ((0, shape.gap), (1, shape.jaw)):
            value = params[:, column]
            params[:, column] = np.minimum(value, value - closure * (value - ceiling))

    return {
        name: np.interp(times, grid, params[:, column])
        for column, name in enumerate(["gap", "jaw", "width", "rounding"])
    }


def _segment_of(grid: np.ndarray, timeline: Timeline) -> tuple[np.ndarray, np.ndarray]:
    """For each grid time, the last phone starting at or before it (-1: none) and whether the
    time is inside that phone."""
    segment = np.searchsorted(timeline.starts, grid, side="right") - 1
    inside = np.zeros(len(grid), dtype=bool)
    valid = segment >= 0
    inside[valid] = grid[valid] < timeline.ends[segment[valid]]
    return segment, inside


def _pauses(timeline: Timeline) -> tuple[np.ndarray, np.ndarray]:
    """Start and end of the pause before each phone, and of the one after the last phone.

    The silences before the first and after the last phone are endless.
    """
    starts = np.concatenate([[-np.inf], timeline.ends])
    ends = np.concatenate([timeline.starts, [np.inf]])
    return starts, ends


def _closure_strength(grid: np.ndarray, intervals: np.ndarray) -> np.ndarray:
    """1 inside the intervals, easing to 0 over CLOSURE_RAMP outside them."""
    if len(intervals) == 0:
        return np.zeros(len(grid))
    first = np.clip(np.ceil((intervals[:, 0] - grid[0]) / GRID_STEP), 0, len(grid)).astype(int)
    last = np.clip(np.floor((intervals[:, 1] - grid[0]) / GRID_STEP), -1, len(grid) - 1)
    last = last.astype(int)
    keep = last >= first
    change = np.zeros(len(grid) + 1)
    np.add.at(change, first[keep], 1.0)
    np.add.at(change, last[keep] + 1, -1.0)
    held = np.cumsum(change[:-1]) > 0
    if not held.any():
        return np.zeros(len(grid))
    distance = ndimage.distance_transform_edt(~held) * GRID_STEP
    return _smoothstep(1.0 - distance / CLOSURE_RAMP)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def mouth_offsets(
    face_points: np.ndarray,
    gap: np.ndarray,
    jaw: np.ndarray,
    width: np.ndarray,
    rounding: np.ndarray,
) -> np.ndarray:
    """Offsets (F, 68, 2) in face coordinates (IOD) that give each frame's mouth and jaw.

    ``face_points``: the neutral landmarks in face coordinates. The target lip gap is absolute:
    gap 0 puts each inner-lip pair (61/67, 62/66, 63/65) on top of each other whatever the
    portrait's own mouth does (a smile with teeth showing is already open).
    """
    frames = len(gap)
    offsets = np.zeros((frames, 68, 2))
    v = face_points[:, 1]

    side_ratio = SIDE_GAP_OPEN + (SIDE_GAP_ROUND - SIDE_GAP_OPEN) * rounding
    # (upper inner, lower inner, upper outer, lower outer, target gap) per column of the mouth.
    columns = [
        (62, 66, 51, 57, gap),
        (61, 67, 50, 58, gap * side_ratio),
        (63, 65, 52, 56, gap * side_ratio),
    ]
    upper_moves = {}
    lower_moves = {}
    for upper, lower, upper_outer, lower_outer, target in columns:
        change = target - (v[lower] - v[upper])
        upper_moves[upper] = -UPPER_LIP_SHARE * change
        lower_moves[lower] = (1.0 - UPPER_LIP_SHARE) * change
        offsets[:, upper, 1] = offsets[:, upper_outer, 1] = upper_moves[upper]
        offsets[:, lower, 1] = offsets[:, lower_outer, 1] = lower_moves[lower]
    # The corners follow the middle of the opening; outer points between corner and side
    # points partly each.
    corner_move = 0.5 * (upper_moves[62] + lower_moves[66])
    offsets[:, [48, 54, 60, 64], 1] = corner_move[:, None]
    offsets[:, 49, 1] = 0.6 * upper_moves[61] + 0.4 * corner_move
    offsets[:, 53, 1] = 0.6 * upper_moves[63] + 0.4 * corner_move
    offsets[:, 59, 1] = 0.6 * lower_moves[67] + 0.4 * corner_move
    offsets[:, 55, 1] = 0.6 * lower_moves[65] + 0.4 * corner_move

    # Rounding pushes the lips forward: seen from the front they look fuller and the opening
    # rounder.
    offsets[:, 50:53, 1] -= POUT * rounding[:, None]
    offsets[:, 56:59, 1] += POUT * rounding[:, None]
    corner_side = np.sign(face_points[[60, 64], 0])
    offsets[:, [60, 64], 0] -= ROUND_CORNER_PULL * rounding[:, None] * corner_side

    # Width scales the lips sideways about the mouth's centre.
    offsets[:, 48:68, 0] += width[:, None] * face_points[48:68, 0]

    offsets[:, 5:12, 1] += jaw[:, None] * JAW_FOLLOW
    return offsets


def phrase_onsets(timeline: Timeline, rest_after: float) -> np.ndarray:
    """Start times of phones that follow a pause of at least ``rest_after`` (or nothing)."""
    if len(timeline.starts) == 0:
        return np.zeros(0)
    previous_end = np.concatenate([[-np.inf], timeline.ends[:-1]])
    return timeline.starts[timeline.starts - previous_end >= rest_after]


def brow_track(rng: np.random.Generator, times: np.ndarray, onsets: np.ndarray) -> np.ndarray:
    """Brow height (IOD, up) per frame: a soft raise at some phrase onsets."""
    chosen = onsets[rng.random(len(onsets)) < BROW_RAISE_CHANCE]
    heights = BROW_RAISE_HEIGHT * rng.uniform(0.6, 1.0, len(chosen))
    raise_ = np.zeros(len(times))
    reach = 4.0 * BROW_RAISE_WIDTH
    for onset, height in zip(chosen + BROW_RAISE_DELAY, heights, strict=True):
        window = slice(*np.searchsorted(times, [onset - reach, onset + reach]))
        raise_[window] += height * np.exp(-0.5 * ((times[window] - onset) / BROW_RAISE_WIDTH) ** 2)
    return raise_


def blink_track(
    rng: np.random.Generator,
    times: np.ndarray,
    *,
    fps: float,
    interval: tuple[float, float],
    blink_duration: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Eyelid closure per frame (0 open .. 1 lids meet) and the blinks' start times."""
    if len(times) == 0:
        return np.zeros(0), np.zeros(0)
    end = times[-1]
    shortest, longest = interval
    # Enough intervals to pass the end even if all are the shortest.
    gaps = rng.uniform(shortest, longest, int(end / shortest) + 2)
    first = rng.uniform(0.3 * shortest, shortest)
    peaks = first + np.concatenate([[0.0], np.cumsum(gaps)])
    # Each blink closes fully on a frame, so it shows at any frame rate.
    peaks = np.round(peaks * fps) / fps
    closing = BLINK_CLOSING_SHARE * blink_duration
    opening = blink_duration - closing
    peaks = peaks[peaks - closing < end]

    closure = np.zeros(len(times))
    if len(peaks):
        nearest = np.clip(np.searchsorted(peaks, times), 1, max(len(peaks) - 1, 1))
        for candidate in (nearest - 1, np.minimum(nearest, len(peaks) - 1)):
            delta = times - peaks[candidate]
            shape = np.where(
                delta <= 0,
                _smoothstep(1.0 + delta / closing),
                _smoothstep(1.0 - delta / opening),
            )
            closure = np.maximum(closure, shape)
    return closure, peaks - closing


def close_eyelids(points: np.ndarray, closure: np.ndarray) -> None:
    """Move each upper/lower eyelid pair toward their meeting line, in place."""
    upper = points[:, EYELID_PAIRS[:, 0]]
    lower = points[:, EYELID_PAIRS[:, 1]]
    apart = (lower - upper) * closure[:, None, None]
    points[:, EYELID_PAIRS[:, 0]] = upper + UPPER_LID_SHARE * apart
    points[:, EYELID_PAIRS[:, 1]] = lower - (1.0 - UPPER_LID_SHARE) * apart


def head_track(
    rng: np.random.Generator, times: np.ndarray, *, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """A slow, smooth head motion: rotation (radians) and shift (F, 2) in face coordinates."""
    amplitudes = np.array([HEAD_ROTATION, *HEAD_SHIFT]) * scale
    low, high = HEAD_FREQUENCIES
    frequencies = rng.uniform(low, high, (3, HEAD_COMPONENTS))
    phases = rng.uniform(0.0, 2.0 * np.pi, (3, HEAD_COMPONENTS))
    weights = rng.uniform(0.5, 1.0, (3, HEAD_COMPONENTS))
    weights *= (amplitudes / weights.sum(axis=1))[:, None]  # the sum never exceeds the amplitude
    waves = np.sin(2.0 * np.pi * frequencies[None] * times[:, None, None] + phases[None])
    motion = (waves * weights[None]).sum(axis=2)
    return motion[:, 0], motion[:, 1:]


def move_head(
    points: np.ndarray, angle: np.ndarray, shift: np.ndarray, pivot: np.ndarray
) -> np.ndarray:
    """Rotate every frame's points by ``angle`` about ``pivot`` and shift them (pixels)."""
    cos, sin = np.cos(angle)[:, None], np.sin(angle)[:, None]
    relative = points - pivot
    x, y = relative[..., 0], relative[..., 1]
    rotated = np.stack([cos * x - sin * y, sin * x + cos * y], axis=-1)
    return rotated + pivot + shift[:, None, :]
