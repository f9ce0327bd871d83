"""A one-page lip-sync check: presenter frames plus a timeline of sound, words, phones and mouth.

The top is a contact sheet of evenly spaced presenter frames, each labelled with its time and
the word being spoken. Below it, a few seconds of the story on one time axis: the waveform, the
word and phone spans (and the visemes when given), and the intended mouth opening, so a person
can see at a glance whether the mouth opens on the vowels and shuts on the pauses.
"""

from __future__ import annotations

import bisect
from pathlib import Path

import numpy as np
import soundfile

# The Agg canvas directly, not pyplot: no display needed and no global figure state.
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

from storyreel.compose import font, index_frames

SHEET_WIDTH = 1600
WINDOW_SECONDS = 6.0
VOWELS = frozenset(
    {
        "AA",
        "AE",
        "AH",
        "AO",
        "AW",
        "AY",
        "EH",
        "ER",
        "EY",
        "IH",
        "IY",
        "OW",
        "OY",
        "UH",
        "UW",
    }
)
_LABEL_HEIGHT = 44
_GAP = 8
_BACKGROUND = (250, 250, 248)


def make_preview(
    *,
    frame_dirs: list[Path],
    wav: Path,
    phonemes: dict,
    visemes: dict | None,
    mouth_open: np.ndarray | None,
    fps: float,
    out_png: Path,
    columns: int = 6,
    rows: int = 3,
    window: tuple[float, float] | None = None,
) -> Path:
    """Write the preview PNG (SHEET_WIDTH pixels wide) and return its path.

    ``window`` (start, end) in speech seconds picks the timeline's span; by default the first
    WINDOW_SECONDS from just before the first word.
    """
    paths = index_frames(frame_dirs)
    if not paths:
        raise ValueError(f"no presenter frames in {', '.join(map(str, frame_dirs))}")
    words = phonemes["words"]
    duration = float(phonemes.get("duration") or max(paths) / fps)
    if window is None:
        start = max(0.0, (words[0]["start"] if words else 0.0) - 0.3)
        end = min(duration, start + WINDOW_SECONDS)
        start = max(0.0, end - WINDOW_SECONDS)
        window = (start, end)

    chosen = _evenly_spaced(sorted(paths), columns * rows)
    sheet = _contact_sheet([paths[k] for k in chosen], chosen, fps, phonemes, mouth_open, columns)
    timeline = _timeline(wav, phonemes, visemes, mouth_open, fps, window, chosen)

    page = Image.new("RGB", (SHEET_WIDTH, sheet.height + timeline.height), _BACKGROUND)
    page.paste(sheet, (0, 0))
    page.paste(timeline, (0, sheet.height))
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_png.with_name(out_png.stem + ".tmp.png")
    page.save(tmp, optimize=False)
    tmp.replace(out_png)
    return out_png


def _evenly_spaced(numbers: list[int], count: int) -> list[int]:
    if len(numbers) <= count:
        return numbers
    picks = np.linspace(0, len(numbers) - 1, count).round().astype(int)
    return [numbers[i] for i in picks]


def span_at(spans: list[dict], t: float) -> dict | None:
    """The span (word or phone) that holds time ``t``, if any (spans are in time order)."""
    position = bisect.bisect_right([span["start"] for span in spans], t) - 1
    if position >= 0 and t < spans[position]["end"]:
        return spans[position]
    return None


def _contact_sheet(
    paths: list[Path],
    numbers: list[int],
    fps: float,
    phonemes: dict,
    mouth_open: np.ndarray | None,
    columns: int,
) -> Image.Image:
    cell_w = (SHEET_WIDTH - _GAP * (columns + 1)) // columns
    with Image.open(paths[0]) as first:
        cell_h = round(cell_w * first.height / first.width)
    rows = -(-len(paths) // columns)
    sheet = Image.new(
        "RGB", (SHEET_WIDTH, _GAP + rows * (cell_h + _LABEL_HEIGHT + _GAP)), _BACKGROUND
    )
    draw = ImageDraw.Draw(sheet)
    small, bold = font(14), font(16, bold=True)
    for position, (path, number) in enumerate(zip(paths, numbers, strict=True)):
        x = _GAP + (position % columns) * (cell_w + _GAP)
        y = _GAP + (position // columns) * (cell_h + _LABEL_HEIGHT + _GAP)
        with Image.open(path) as frame:
            sheet.paste(
                frame.convert("RGB").resize((cell_w, cell_h), Image.Resampling.LANCZOS), (x, y)
            )
        t = number / fps
        details = f"{t:.2f} s \u00b7 frame {number}"
        if mouth_open is not None and number < len(mouth_open):
            details += f" \u00b7 open {float(mouth_open[number]):.2f}"
        draw.text((x, y + cell_h + 4), details, font=small, fill=(90, 90, 90))
        word = span_at(phonemes["words"], t)
        if word is None:
            draw.text((x, y + cell_h + 21), "(pause)", font=bold, fill=(150, 150, 150))
            continue
        label = f"\u201c{word['word']}\u201d"
        draw.text((x, y + cell_h + 21), label, font=bold, fill=(20, 20, 20))
        phone = span_at(phonemes["phones"], t)
        if phone is not None:
            draw.text(
                (x + bold.getlength(label) + 8, y + cell_h + 23),
                phone["phone"],
                font=small,
                fill=(176, 96, 0) if phone["phone"] in VOWELS else (90, 90, 90),
            )
    return sheet


def _timeline(
    wav: Path,
    phonemes: dict,
    visemes: dict | None,
    mouth_open: np.ndarray | None,
    fps: float,
    window: tuple[float, float],
    sheet_frames: list[int],
) -> Image.Image:
    start, end = window
    panels = ["wave", "words", "phones"]
    if visemes:
        panels.append("visemes")
    if mouth_open is not None:
        panels.append("mouth")
    heights = {"wave": 1.3, "words": 0.7, "phones": 0.7, "visemes": 0.7, "mouth": 1.2}
    dpi = 100
    figure = Figure(figsize=(SHEET_WIDTH / dpi, 1.0 + sum(heights[p] for p in panels)), dpi=dpi)
    figure.patch.set_facecolor(np.array(_BACKGROUND) / 255)
    axes = figure.subplots(
        len(panels),
        1,
        sharex=True,
        gridspec_kw={"height_ratios": [heights[p] for p in panels], "hspace": 0.08},
    )
    axes = dict(zip(panels, np.atleast_1d(axes), strict=True))
    figure.subplots_adjust(left=0.06, right=0.99, top=0.94, bottom=0.1)
    figure.suptitle(
        f"Lip-sync timeline {start:.2f}\u2013{end:.2f} s (speech time). Vowels are dark orange: "
        "the mouth should be open on them. Dots: frames in the contact sheet above.",
        x=0.06,
        ha="left",
        fontsize=11,
    )

    _plot_waveform(axes["wave"], wav, start, end)
    in_window = [w for w in phonemes["words"] if w["end"] > start and w["start"] < end]
    _plot_spans(
        axes["words"],
        "words",
        [
            (w["start"], w["end"], w["word"], ("#cfe0f5", "#a9c8ee")[n % 2])
            for n, w in enumerate(in_window)
        ],
        fontsize=9,
    )
    # Vowels in a stronger colour: the mouth should be open on them.
    _plot_spans(
        axes["phones"],
        "phones",
        [
            (p["start"], p["end"], p["phone"], "#f0b060" if p["phone"] in VOWELS else "#f7dfc2")
            for p in phonemes["phones"]
            if p["end"] > start and p["start"] < end
        ],
        fontsize=7,
    )
    if "visemes" in axes:
        _plot_spans(
            axes["visemes"],
            "visemes",
            [
                (v["start"], v["end"], v["viseme"], ("#dcefd9", "#b8dfb2")[n % 2])
                for n, v in enumerate(visemes["visemes"])
                if v["end"] > start and v["start"] < end
            ],
            fontsize=7,
        )
        for blink in visemes.get("blinks", []):
            if start <= blink <= end:
                axes["visemes"].plot([blink], [0.5], marker="v", color="#555555", markersize=6)
    if "mouth" in axes:
        _plot_mouth(
            axes["mouth"], np.asarray(mouth_open, dtype=float), fps, start, end, sheet_frames
        )

    for word in in_window:
        for panel in axes.values():
            panel.axvline(word["start"], color="#9aa7b8", linewidth=0.6, alpha=0.6, zorder=0)
    last = axes[panels[-1]]
    last.set_xlim(start, end)
    last.set_xlabel("seconds")
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return Image.fromarray(rgba[..., :3].copy())


def _plot_waveform(axis, wav: Path, start: float, end: float) -> None:
    info = soundfile.info(str(wav))
    first = int(start * info.samplerate)
    samples, rate = soundfile.read(
        str(wav), start=first, stop=int(end * info.samplerate), dtype="float32", always_2d=True
    )
    samples = samples.mean(axis=1)
    if samples.size:
        # A min/max envelope per bin draws like the full waveform at a fraction of the points.
        bins = min(samples.size, 4000)
        usable = samples[: samples.size - samples.size % bins].reshape(bins, -1)
        times = start + (np.arange(bins) + 0.5) * usable.shape[1] / rate
        axis.fill_between(
            times, usable.min(axis=1), usable.max(axis=1), color="#3b5b85", linewidth=0
        )
    peak = float(np.abs(samples).max()) if samples.size else 1.0
    axis.set_ylim(-1.05 * max(peak, 1e-3), 1.05 * max(peak, 1e-3))
    axis.set_ylabel("audio")
    axis.set_yticks([])


def _plot_spans(
    axis, name: str, spans: list[tuple[float, float, str, str]], *, fontsize: int
) -> None:
    """Labelled spans (start, end, label, colour) in a row; neighbouring labels alternate
    height so that short spans stay legible."""
    for number, (span_start, span_end, label, colour) in enumerate(spans):
        axis.axvspan(span_start, span_end, ymin=0.08, ymax=0.92, color=colour, linewidth=0)
        axis.text(
            (span_start + span_end) / 2,
            0.68 if number % 2 == 0 else 0.32,
            label,
            ha="center",
            va="center",
            fontsize=fontsize,
            clip_on=True,
        )
    axis.set_ylim(0, 1)
    axis.set_yticks([])
    axis.set_ylabel(name)


def _plot_mouth(
    axis, mouth_open: np.ndarray, fps: float, start: float, end: float, sheet_frames: list[int]
) -> None:
    first = max(0, int(np.floor(start * fps)))
    last = min(len(mouth_open), int(np.ceil(end * fps)) + 1)
    frames = np.arange(first, last)
    # Frame k is on screen from k/fps until the next frame: a step plot shows what is seen.
    axis.step(frames / fps, mouth_open[first:last], where="post", color="#c0392b", linewidth=1.4)
    marked = [k for k in sheet_frames if first <= k < last]
    axis.plot(np.array(marked) / fps, mouth_open[marked], "o", color="#222222", markersize=5)
    axis.set_ylim(-0.05, 1.1)
    axis.set_ylabel("mouth open")
