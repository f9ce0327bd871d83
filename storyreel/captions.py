"""Captions: timed words grouped into short cues, written as WebVTT and looked up by time.

Cue text is taken from the normalised transcript (``transcript.json``), so captions show the
words exactly as they were read, with their punctuation; times come from ``phonemes.json``.
A cue holds consecutive words of one sentence: it breaks at a sentence end, at a long pause,
or where it would exceed ``max_words`` words or ``max_chars`` characters. Within those limits
the breaks are balanced (no one-word leftovers) and prefer the commas of the sentence.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from pathlib import Path

# A silence this long between two words of a sentence ends the cue: the caption should not
# hang on screen while nothing is said.
LONG_PAUSE = 0.6

# Costs for choosing where a sentence's cues break (see _split_phrase).
_CUE_COST = 1000.0
_NO_PUNCTUATION_COST = 40.0
_SINGLE_WORD_COST = 300.0
_WEAK_ENDING_COST = 80.0
_BREAK_AFTER = (",", ";", ":", "\u2014", "\u2013", ")")
# A cue should not end on a word that leans on the next one ("... carrying the").
_WEAK_ENDINGS = frozenset(
    {
        "a",
        "an",
        "the",
        "of",
        "to",
        "in",
        "on",
        "at",
        "for",
        "from",
        "by",
        "with",
        "and",
        "or",
        "but",
        "as",
        "into",
        "than",
        "that",
        "this",
        "these",
        "those",
        "its",
        "their",
        "his",
        "her",
        "our",
        "my",
        "your",
    }
)


@dataclass(frozen=True)
class CueWord:
    """One spoken word of a cue."""

    index: int  # index into phonemes.json words (= transcript word order)
    text: str  # as written in the transcript, with the punctuation attached to it
    start: float
    end: float
    char_start: int  # span of ``text`` inside the cue's text
    char_end: int


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    text: str
    words: tuple[CueWord, ...]


@dataclass(frozen=True)
class CaptionAt:
    """What the captions show at one moment."""

    cue: int | None  # index of the cue on screen, None when no caption is shown
    text: str  # the cue's text, "" when none
    word: int | None  # index within the cue of the word being spoken (or last spoken)


def build_cues(
    phonemes: dict, transcript: dict, *, max_words: int = 7, max_chars: int = 42
) -> list[Cue]:
    """Group the timed words of ``phonemes`` into caption cues (speech.wav times)."""
    if max_words < 1 or max_chars < 1:
        raise ValueError("max_words and max_chars must be at least 1")
    tokens = _word_tokens(transcript)
    timed = phonemes["words"]
    if len(timed) != len(tokens):
        raise ValueError(
            f"phonemes.json has {len(timed)} words but the transcript has {len(tokens)}"
        )
    for index, (word, token) in enumerate(zip(timed, tokens, strict=True)):
        if word["word"] != token.word:
            raise ValueError(
                f"word {index}: phonemes.json has {word['word']!r}, the transcript {token.word!r}"
            )
        if word.get("start") is None or word.get("end") is None:
            raise ValueError(f"word {index} ({word['word']!r}) has no times")

    text = transcript["text"]
    cues: list[Cue] = []
    for phrase in _phrases(timed, tokens):
        for first, last in _split_phrase(phrase, tokens, max_words, max_chars):
            cues.append(_make_cue(range(first, last + 1), timed, tokens, text))
    return _without_overlaps(cues)


def write_vtt(
    phonemes: dict,
    transcript: dict,
    out_vtt: Path,
    *,
    max_words: int = 7,
    max_chars: int = 42,
    offset: float = 0.0,
) -> list[Cue]:
    """Write the captions as WebVTT and return the cues (speech.wav times).

    ``offset`` shifts the file's timestamps, e.g. by the length of a video's intro, so the file
    matches the video rather than speech.wav.
    """
    cues = build_cues(phonemes, transcript, max_words=max_words, max_chars=max_chars)
    lines = ["WEBVTT", ""]
    for number, cue in enumerate(cues, start=1):
        lines += [
            str(number),
            f"{vtt_timestamp(cue.start + offset)} --> {vtt_timestamp(cue.end + offset)}",
            _vtt_escape(cue.text),
            "",
        ]
    out_vtt = Path(out_vtt)
    out_vtt.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_vtt.with_name(out_vtt.name + ".tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    tmp.replace(out_vtt)
    return cues


def vtt_timestamp(seconds: float) -> str:
    millis = max(0, round(seconds * 1000))
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}.{millis:03d}"


class CaptionTrack:
    """Looks up what the burned-in captions show at any time (speech.wav seconds).

    A cue stays up for ``hold`` seconds after its last word, unless the next cue starts sooner,
    so short pauses do not make the caption flicker. The highlighted word is the last one of the
    cue that has started: it stays lit through the small gaps between words.
    """

    def __init__(self, cues: list[Cue], *, hold: float = 0.5):
        self.cues = cues
        self.hold = hold
        self._starts = [cue.start for cue in cues]

    def at(self, t: float) -> CaptionAt:
        position = bisect.bisect_right(self._starts, t) - 1
        if position < 0:
            return CaptionAt(None, "", None)
        cue = self.cues[position]
        shown_until = cue.end + self.hold
        if position + 1 < len(self.cues):
            shown_until = min(shown_until, self.cues[position + 1].start)
        if t >= shown_until:
            return CaptionAt(None, "", None)
        word_starts = [word.start for word in cue.words]
        word = max(0, bisect.bisect_right(word_starts, t) - 1)
        return CaptionAt(position, cue.text, word)


def caption_at(cues: list[Cue], t: float, *, hold: float = 0.5) -> CaptionAt:
    """The cue text and the word being spoken at time ``t`` (see CaptionTrack)."""
    return CaptionTrack(cues, hold=hold).at(t)


@dataclass(frozen=True)
class _Token:
    word: str  # the bare word, as phonemes.json names it
    text: str  # the word with the punctuation that belongs to it
    sentence: int
    start_offset: int  # span of ``text`` in transcript text
    end_offset: int


def _word_tokens(transcript: dict) -> list[_Token]:
    """Every transcript word with its neighbouring punctuation ("eleventh," or "(NASA)")."""
    text = transcript["text"]
    spans = [
        (sentence["index"], word)
        for sentence in transcript["sentences"]
        for word in sentence["words"]
    ]
    tokens = []
    for position, (sentence, word) in enumerate(spans):
        start, end = word["start_offset"], word["end_offset"]
        # Reach out to the surrounding whitespace, but never into a neighbouring word: in
        # "well-known" the dash goes with "well", and "known" starts at its own first letter.
        left_limit = tokens[-1].end_offset if tokens else 0
        is_last = position + 1 == len(spans)
        right_limit = len(text) if is_last else spans[position + 1][1]["start_offset"]
        while start > left_limit and not text[start - 1].isspace():
            start -= 1
        while end < right_limit and not text[end].isspace():
            end += 1
        tokens.append(_Token(word["word"], text[start:end], sentence, start, end))
    return tokens


def _phrases(timed: list[dict], tokens: list[_Token]) -> list[list[int]]:
    """Runs of word indices that no cue may cross: sentences, split at long pauses."""
    phrases: list[list[int]] = []
    for index in range(len(timed)):
        new_phrase = (
            index == 0
            or tokens[index].sentence != tokens[index - 1].sentence
            or timed[index]["start"] - timed[index - 1]["end"] >= LONG_PAUSE
        )
        if new_phrase:
            phrases.append([])
        phrases[-1].append(index)
    return phrases


def _split_phrase(
    phrase: list[int], tokens: list[_Token], max_words: int, max_chars: int
) -> list[tuple[int, int]]:
    """Break a phrase into cues (first, last word index) within the limits.

    Dynamic programming over break points: fewest cues first, then even lengths, breaks after
    punctuation, and no single-word cue where another split avoids one.
    """
    count = len(phrase)
    lengths = [len(tokens[index].text) for index in phrase]
    target = sum(lengths) / max(1, -(-count // max_words))
    best: list[tuple[float, int]] = [(0.0, -1)] + [(float("inf"), -1)] * count
    for end in range(1, count + 1):
        if end < count and tokens[phrase[end - 1]].end_offset == tokens[phrase[end]].start_offset:
            continue  # touching words ("well-" "known") are never split
        chars = -1
        for start in range(end - 1, -1, -1):
            chars += lengths[start] + 1
            words = end - start
            if words > 1 and (words > max_words or chars > max_chars):
                break
            cost = best[start][0] + _CUE_COST + ((chars - target) / 4) ** 2
            last = tokens[phrase[end - 1]]
            if end < count and not last.text.endswith(_BREAK_AFTER):
                cost += _NO_PUNCTUATION_COST
                if last.text.lower() in _WEAK_ENDINGS:
                    cost += _WEAK_ENDING_COST
            if words == 1 and count > 1:
                cost += _SINGLE_WORD_COST
            if cost < best[end][0]:
                best[end] = (cost, start)
    cues = []
    end = count
    while end > 0:
        start = best[end][1]
        cues.append((phrase[start], phrase[end - 1]))
        end = start
    return cues[::-1]


def _make_cue(indices: range, timed: list[dict], tokens: list[_Token], text: str) -> Cue:
    """A cue's text is the transcript between its words, with runs of whitespace made one space.

    Free-standing punctuation ("fish & chips", "late \u2014 again") stays in the text; such a
    mark after the cue's last word ends the cue rather than starting the next one.
    """
    parts: list[str] = []
    words = []
    cursor = 0
    for index in indices:
        token = tokens[index]
        if parts:
            gap = _between(text, tokens[index - 1].end_offset, token.start_offset)
            parts.append(gap)
            cursor += len(gap)
        parts.append(token.text)
        words.append(
            CueWord(
                index=index,
                text=token.text,
                start=float(timed[index]["start"]),
                end=float(timed[index]["end"]),
                char_start=cursor,
                char_end=cursor + len(token.text),
            )
        )
        cursor += len(token.text)
    last = indices[-1]
    if last + 1 < len(tokens) and tokens[last + 1].sentence == tokens[last].sentence:
        parts.append(_between(text, tokens[last].end_offset, tokens[last + 1].start_offset))
    cue_text = "".join(parts).rstrip()
    return Cue(words[0].start, max(word.end for word in words), cue_text, tuple(words))


def _between(text: str, start: int, end: int) -> str:
    """The transcript between two words, whitespace runs collapsed ("" if they touch)."""
    return re.sub(r"\s+", " ", text[start:end])


def _without_overlaps(cues: list[Cue]) -> list[Cue]:
    """End each cue no later than the next one starts (timings from two sources may touch)."""
    fixed = []
    for position, cue in enumerate(cues):
        end = cue.end
        if position + 1 < len(cues):
            end = min(end, cues[position + 1].start)
        end = max(end, cue.start)
        fixed.append(Cue(cue.start, end, cue.text, cue.words))
    return fixed


_VTT_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def _vtt_escape(text: str) -> str:
    # "-->" may not appear in cue text, and a blank line would end the cue early.
    text = re.sub(r"[&<>]", lambda match: _VTT_ESCAPES[match.group()], text)
    return re.sub(r"\s*\n\s*", " ", text)
