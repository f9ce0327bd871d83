"""The final timeline, ``phonemes.json``: every transcript word with timed ARPAbet phones.

Aligned words keep the aligner's times and phones. A word the aligner could not place gets a
pronunciation (the synthesiser's own, from ``speech.json``, else g2p_en) and times from the
gap it was spoken in: between its aligned neighbours, within its sentence's span. Where the
synthesiser reported its own timing for every word of the gap, those times are used;
otherwise the gap is shared out in proportion to the words' phones, vowels weighing more than
consonants.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from storyreel import g2p
from storyreel.g2p import ARPABET_PHONES, ARPABET_VOWELS, plain_phones, strip_stress

# Relative length of a phone when a word's time is shared out among its phones. In read
# English a vowel lasts roughly one and a half times as long as a consonant.
VOWEL_WEIGHT = 1.5
CONSONANT_WEIGHT = 1.0

ALIGNED = "aligned"
G2P = "g2p"


@dataclass
class StoryWord:
    """A transcript word with what is known about it before timing."""

    index: int
    word: str
    sentence: int
    span: tuple[float, float] | None  # the sentence's audio span from speech.json
    spoken: dict | None  # the speech.json word entry
    previous_word: str | None  # the word before it in its sentence, for g2p's tagger


@dataclass
class TimedWord:
    start: float
    end: float
    source: str
    phones: list[tuple[str, float, float]] = field(default_factory=list)


def build_phonemes(alignment: dict, transcript: dict, speech: dict, story_id: str) -> dict:
    """Build the ``phonemes.json`` dict from alignment.json, transcript.json and speech.json."""
    duration = float(speech["duration"])
    words = _story_words(transcript, speech)
    entries = alignment["words"]
    if len(entries) != len(words):
        raise ValueError(
            f"alignment has {len(entries)} words, the transcript {len(words)}: "
            "they were made from different transcripts"
        )
    timed: list[TimedWord | None] = []
    for word, entry in zip(words, entries, strict=True):
        if entry["word"] != word.word:
            raise ValueError(
                f"alignment word {entry['word']!r} does not match transcript word "
                f"{word.index} {word.word!r}"
            )
        timed.append(_aligned_word(word, entry))

    for run in _unaligned_runs(words, timed):
        low, high = _gap(run, words, timed, duration)
        for word, placed in zip(run, _place_run(run, low, high), strict=True):
            timed[word.index] = placed

    return {
        "story": story_id,
        "duration": duration,
        "words": [
            {
                "index": word.index,
                "word": word.word,
                "start": round(placed.start, 3),
                "end": round(placed.end, 3),
                "sentence": word.sentence,
                "source": placed.source,
            }
            for word, placed in zip(words, timed, strict=True)
        ],
        "phones": _phone_timeline(timed, duration),
    }


def _story_words(transcript: dict, speech: dict) -> list[StoryWord]:
    spoken_sentences = {sentence["index"]: sentence for sentence in speech.get("sentences", [])}
    words = []
    for sentence in transcript["sentences"]:
        spoken = spoken_sentences.get(sentence["index"], {})
        span = (spoken["start"], spoken["end"]) if "start" in spoken and "end" in spoken else None
        spoken_words = spoken.get("words") or []
        # speech.json has one entry per transcript word; if not, its entries cannot be matched.
        if len(spoken_words) != len(sentence["words"]):
            spoken_words = [None] * len(sentence["words"])
        previous = None
        for word, spoken_word in zip(sentence["words"], spoken_words, strict=True):
            words.append(
                StoryWord(len(words), word["word"], sentence["index"], span, spoken_word, previous)
            )
            previous = word["word"]
    return words


def _aligned_word(word: StoryWord, entry: dict) -> TimedWord | None:
    """The aligner's times and phones for a word, or None if it was not found in the audio."""
    if entry.get("case") != "success" or entry.get("start") is None:
        return None
    placed = TimedWord(float(entry["start"]), float(entry["end"]), ALIGNED)
    position = placed.start
    for phone in entry.get("phones", []):
        # gentle labels are "dh_B": phone, then its position in the word.
        name = strip_stress(phone["phone"].split("_")[0])
        end = position + float(phone["duration"])
        if name in ARPABET_PHONES:  # other labels (gentle's "oov", "sil") become silence
            placed.phones.append((name, position, end))
        position = end
    if not placed.phones:
        # Placed in time but without usable phones: keep its times, take a pronunciation.
        placed.phones = _spread(_pronunciation(word), placed.start, placed.end)
    return placed


def _unaligned_runs(words: list[StoryWord], timed: list[TimedWord | None]) -> list[list[StoryWord]]:
    """Maximal runs of consecutive unaligned words, never crossing a sentence boundary."""
    runs: list[list[StoryWord]] = []
    for word, placed in zip(words, timed, strict=True):
        if placed is not None:
            continue
        if runs and runs[-1][-1].index == word.index - 1 and runs[-1][-1].sentence == word.sentence:
            runs[-1].append(word)
        else:
            runs.append([word])
    return runs


def _gap(
    run: list[StoryWord], words: list[StoryWord], timed: list[TimedWord | None], duration: float
) -> tuple[float, float]:
    """The time a run of unaligned words was spoken in.

    Bounded by the nearest timed words around it; where the run starts or ends its sentence,
    also by the sentence's span (pauses between sentences are silence); at the story's ends,
    by 0 and the duration.
    """
    first, last = run[0], run[-1]
    before = next((timed[i] for i in range(first.index - 1, -1, -1) if timed[i]), None)
    after = next((timed[i] for i in range(last.index + 1, len(words)) if timed[i]), None)
    low = before.end if before else 0.0
    high = after.start if after else duration
    starts_sentence = first.index == 0 or words[first.index - 1].sentence != first.sentence
    ends_sentence = last.index + 1 == len(words) or words[last.index + 1].sentence != last.sentence
    if first.span and starts_sentence:
        low = max(low, first.span[0])
    if last.span and ends_sentence:
        high = min(high, last.span[1])
    return low, max(low, high)


def _place_run(run: list[StoryWord], low: float, high: float) -> list[TimedWord]:
    pronunciations = [_pronunciation(word) for word in run]
    synthesiser_times = [_synthesiser_times(word) for word in run]
    if all(synthesiser_times):
        placed = []
        position = low
        for phones, (start, end) in zip(pronunciations, synthesiser_times, strict=True):
            start = min(max(start, position), high)
            end = min(max(end, start), high)
            placed.append(TimedWord(start, end, G2P, _spread(phones, start, end)))
            position = end
        return placed

    weights = [sum(_phone_weight(phone) for phone in phones) for phones in pronunciations]
    if not any(weights):  # nothing pronounceable: share the gap equally
        weights = [1.0] * len(run)
    seconds_per_weight = (high - low) / sum(weights)
    placed = []
    position = low
    for phones, weight in zip(pronunciations, weights, strict=True):
        end = position + weight * seconds_per_weight
        placed.append(TimedWord(position, end, G2P, _spread(phones, position, end)))
        position = end
    return placed


def _pronunciation(word: StoryWord) -> list[str]:
    """Stress-free phones: the synthesiser's own if usable, else g2p_en's."""
    spoken = plain_phones((word.spoken or {}).get("phones"))
    if spoken:
        return spoken
    return plain_phones(g2p.pronounce(word.word, word.previous_word)) or []


def _synthesiser_times(word: StoryWord) -> tuple[float, float] | None:
    spoken = word.spoken or {}
    start, end = spoken.get("start"), spoken.get("end")
    if start is None or end is None:
        return None
    return float(start), float(end)


def _phone_weight(phone: str) -> float:
    return VOWEL_WEIGHT if phone in ARPABET_VOWELS else CONSONANT_WEIGHT


def _spread(phones: list[str], start: float, end: float) -> list[tuple[str, float, float]]:
    """Phones laid end to end over [start, end], each in proportion to its weight."""
    if not phones:
        return []
    total = sum(_phone_weight(phone) for phone in phones)
    spread = []
    position = start
    for phone in phones:
        phone_end = position + (end - start) * _phone_weight(phone) / total
        spread.append((phone, position, phone_end))
        position = phone_end
    return spread


def _phone_timeline(timed: list[TimedWord | None], duration: float) -> list[dict]:
    """All phones in order, rounded to milliseconds, never overlapping.

    Rounding (and an aligner's own slack) can leave a phone starting a millisecond before the
    previous one ends; such overlaps are clamped away rather than reordering anything.
    """
    phones = []
    previous_end = 0.0
    for index, placed in enumerate(timed):
        assert placed is not None  # every word is aligned or placed by now
        for name, start, end in placed.phones:
            start = min(max(round(start, 3), previous_end), duration)
            end = min(max(round(end, 3), start), duration)
            phones.append(
                {"phone": name, "start": start, "end": end, "word": index, "source": placed.source}
            )
            previous_end = end
    return phones
