"""Map a synthesiser's own word segments onto the transcript's words.

espeak-ng (which phonemizes for Piper too) segments a sentence into words its own way: it joins
unstressed function words to their neighbour ("of the" -> one segment "ʌvðə", "in the",
"with the"), keeps hyphenated compounds together ("well-known", "twenty-four"), speaks symbols
as extra words ("&" -> "and") and occasionally splits a long word in two. The transcript's words
are runs of letters. Each transcript word needs the phonemes spoken for it and, where the
backend gives timings, their time span; when the mapping is not clear the word gets its
stand-alone pronunciation and no times, never a guess.

Segments are mapped to words into *groups* (one or more words <-> zero or more segments):

- by character position when the backend reports where each segment's word starts in the
  text (espeak-ng word events);
- otherwise (Piper's phoneme string) by an alignment of the segments' phonemes against each
  word's stand-alone phonemes.

A group of several words in one segment is split where the stand-alone phonemes of its words
line up with the spoken ones. Phonemes are compared in a broad form, consonants as ARPAbet and
every vowel as "V", because function words reduce their vowels in context ("a" is "ˈeɪ" alone,
"ɐ" in a sentence) while their consonants and syllable count stay put.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from storyreel.ipa import IpaPhone, ipa_to_arpabet, is_vowel, parse_ipa
from storyreel.tts.spoken import SpokenSegment

# espeak joins at most a few words into one segment ("of the", "in the", "well-known") and
# rarely splits one word into more than two or three.
MAX_WORDS_PER_SEGMENT = 3
MAX_SEGMENTS_PER_WORD = 3

# How far a mapping may stray from the stand-alone pronunciation (edit distance over broad
# phones, divided by the longer length) and still be trusted.
MAX_DISTANCE_ONE_TO_ONE = 0.5
MAX_DISTANCE_JOINED_OR_SPLIT = 0.4

# Added to the alignment cost of joined or split groups so that, when costs tie, the plain
# one word <-> one segment mapping wins.
JOIN_OR_SPLIT_PENALTY = 0.1

# Alignment cells whose cost exceeds the best in their row by more than this many phone edits
# are not extended.
ALIGNMENT_BEAM = 12.0

VOWEL_CLASS = "V"


@dataclass
class WordSpeech:
    """What the synthesiser spoke for one transcript word."""

    word: str
    phones: list[str]
    """ARPAbet with stress digits."""

    start: int | None = None
    """First sample of the word in the sentence audio, None when unknown."""

    end: int | None = None
    """Exclusive end sample, None when unknown."""


@dataclass
class _SpokenPhone:
    """One parsed phoneme of a segment, with the samples it covers (if timed)."""

    phone: IpaPhone
    segment: SpokenSegment

    @property
    def start(self) -> int | None:
        starts = self.segment.starts
        return None if starts is None else starts[self.phone.start]

    @property
    def end(self) -> int | None:
        ends = self.segment.ends
        return None if ends is None else ends[self.phone.end - 1]


@dataclass
class _Group:
    """Transcript words ``words`` spoken as ``segments``."""

    words: range
    segments: list[SpokenSegment]
    trusted: bool
    """Whether the words-to-segments mapping itself is certain enough to use."""


def speak_words(
    words: Sequence[str],
    word_spans: Sequence[tuple[int, int]],
    segments: Sequence[SpokenSegment],
    phonemize_word: Callable[[str], str],
) -> list[WordSpeech]:
    """One :class:`WordSpeech` per transcript word, in order.

    ``word_spans`` are the words' character ranges in the sentence text (used when segments
    carry text positions); ``phonemize_word`` gives a word's stand-alone IPA.
    """
    expected = [_broad(parse_ipa(phonemize_word(word))) for word in words]
    if segments and all(segment.text_position is not None for segment in segments):
        groups = _groups_by_position(word_spans, segments)
    else:
        groups = _groups_by_phonemes(expected, segments)

    spoken: list[WordSpeech] = []
    for group in groups:
        spoken.extend(_speak_group(group, words, expected, phonemize_word))
    return spoken


# --- grouping by character position --------------------------------------------------------


def _groups_by_position(
    word_spans: Sequence[tuple[int, int]], segments: Sequence[SpokenSegment]
) -> list[_Group]:
    """Group segments under the word their text position falls in.

    Words with no segment of their own that follow a word with one were spoken inside that
    word's segment (espeak joined them); words before the first segment were not spoken.
    Segments at no word (a symbol spoken as a word) belong to no transcript word.
    """
    groups: list[_Group] = []
    last_word = -1
    for segment in segments:
        word = _word_at(segment, word_spans)
        if word is None or word < last_word:
            continue
        if word == last_word:
            groups[-1].segments.append(segment)
            continue
        if groups:
            groups[-1].words = range(groups[-1].words.start, word)
        elif word > 0:
            groups.append(_Group(range(0, word), [], trusted=False))
        groups.append(_Group(range(word, word + 1), [segment], trusted=True))
        last_word = word

    if groups:
        groups[-1].words = range(groups[-1].words.start, len(word_spans))
    elif word_spans:
        groups.append(_Group(range(0, len(word_spans)), [], trusted=False))
    return groups


def _word_at(segment: SpokenSegment, word_spans: Sequence[tuple[int, int]]) -> int | None:
    """The word the segment's text position is in, or the first word its text covers."""
    position = segment.text_position
    assert position is not None
    covered_end = position + max(segment.text_length or 0, 1)
    for index, (start, end) in enumerate(word_spans):
        if start <= position < end:
            return index
    for index, (start, _end) in enumerate(word_spans):
        if position <= start < covered_end:
            return index
    return None


# --- grouping by phoneme alignment ---------------------------------------------------------


def _groups_by_phonemes(
    expected: Sequence[list[str]], segments: Sequence[SpokenSegment]
) -> list[_Group]:
    """Align words to segments by their phonemes (dynamic programming over both sequences).

    Steps: one word to one segment; several words joined in one segment; one word split over
    several segments; two words over two segments split elsewhere ("i" "phonewielding" for
    "iPhone-wielding"); a segment that is no transcript word; a word that was not spoken. A step
    costs the edit distance between the words' stand-alone broad phones and the spoken ones;
    skipping costs the length of what is skipped.
    """
    spoken = [_broad(parse_ipa(segment.ipa)) for segment in segments]
    word_count, segment_count = len(expected), len(spoken)
    steps = [
        (word_step, segment_step)
        for word_step in range(1, MAX_WORDS_PER_SEGMENT + 1)
        for segment_step in range(1, MAX_SEGMENTS_PER_WORD + 1)
        if min(word_step, segment_step) == 1 or (word_step, segment_step) == (2, 2)
    ] + [(1, 0), (0, 1)]

    infinity = float("inf")
    cost = [[infinity] * (segment_count + 1) for _ in range(word_count + 1)]
    came_from: dict[tuple[int, int], tuple[int, int]] = {}
    cost[0][0] = 0.0
    for word in range(word_count + 1):
        row = cost[word]
        # Beam: cells far costlier than the best in their row never lie on the best path in
        # practice, and skipping them keeps long sentences fast.
        row_limit = min(row) + ALIGNMENT_BEAM
        for segment in range(segment_count + 1):
            here = row[segment]
            if here > row_limit:
                continue
            for word_step, segment_step in steps:
                next_word, next_segment = word + word_step, segment + segment_step
                if next_word > word_count or next_segment > segment_count:
                    continue
                words_phones = _joined(expected[word:next_word])
                spoken_phones = _joined(spoken[segment:next_segment])
                # The length difference is a lower bound on the edit distance: skip the exact
                # distance when even that cannot improve the target cell.
                if (
                    here + abs(len(words_phones) - len(spoken_phones))
                    >= cost[next_word][next_segment]
                ):
                    continue
                step_cost = _step_cost(words_phones, spoken_phones, word_step, segment_step)
                if here + step_cost < cost[next_word][next_segment]:
                    cost[next_word][next_segment] = here + step_cost
                    came_from[(next_word, next_segment)] = (word, segment)

    groups: list[_Group] = []
    position = (word_count, segment_count)
    while position != (0, 0):
        previous = came_from[position]
        words = range(previous[0], position[0])
        if words:  # a segment that is no transcript word is dropped
            group_expected = _joined(expected[previous[0] : position[0]])
            group_spoken = _joined(spoken[previous[1] : position[1]])
            limit = (
                MAX_DISTANCE_ONE_TO_ONE
                if len(words) == 1 and position[1] - previous[1] == 1
                else MAX_DISTANCE_JOINED_OR_SPLIT
            )
            trusted = bool(group_spoken) and _distance(group_expected, group_spoken) <= limit
            groups.append(_Group(words, list(segments[previous[1] : position[1]]), trusted))
        position = previous
    groups.reverse()
    return groups


def _step_cost(
    words_phones: list[str], spoken_phones: list[str], word_count: int, segment_count: int
) -> float:
    if word_count == 0 or segment_count == 0:
        return float(len(words_phones) + len(spoken_phones))  # skipping what is there
    distance = float(_edit_distance(words_phones, spoken_phones))
    if word_count == 1 and segment_count == 1:
        return distance
    return distance + JOIN_OR_SPLIT_PENALTY


# --- one group -> its words ----------------------------------------------------------------


def _speak_group(
    group: _Group,
    words: Sequence[str],
    expected: Sequence[list[str]],
    phonemize_word: Callable[[str], str],
) -> list[WordSpeech]:
    spoken_phones = [
        _SpokenPhone(phone, segment)
        for segment in group.segments
        for phone in parse_ipa(segment.ipa)
    ]
    ranges: list[tuple[int, int] | None]
    if not group.trusted or not spoken_phones:
        ranges = [None] * len(group.words)
    elif len(group.words) == 1:
        ranges = [(0, len(spoken_phones))]
    else:
        ranges = _split_phones(
            [expected[word] for word in group.words],
            [_broad([spoken.phone]) for spoken in spoken_phones],
        )

    result = []
    for word, phone_range in zip(group.words, ranges, strict=True):
        if phone_range is None:
            # The mapping is unclear: the word's stand-alone pronunciation, and no times.
            stand_alone = ipa_to_arpabet(phonemize_word(words[word]))
            result.append(WordSpeech(words[word], stand_alone))
            continue
        first, last = phone_range
        word_phones = spoken_phones[first:last]
        phones = [phone for spoken in word_phones for phone in spoken.phone.arpabet]
        result.append(WordSpeech(words[word], phones, word_phones[0].start, word_phones[-1].end))
    return result


def _split_phones(
    expected_per_word: Sequence[list[str]], spoken_broad_per_phone: Sequence[list[str]]
) -> list[tuple[int, int] | None]:
    """Split the spoken phonemes of a joined segment among its words.

    ``spoken_broad_per_phone`` holds the broad phones of each spoken phoneme (a syllabic n̩ is
    two: V, N). The words' stand-alone phones are aligned with the spoken ones; a boundary
    between two words is sure where the last phone matched in the first word and the first phone
    matched in the second are neighbours in the spoken sequence (no spoken phone between them
    that could belong to either) and fall in different phonemes. Returns each word's range of
    spoken phonemes, or None where a boundary of the word is unsure.
    """
    expected = _joined(expected_per_word)
    spoken: list[str] = []
    phone_of_token: list[int] = []
    for phone_index, broad in enumerate(spoken_broad_per_phone):
        spoken.extend(broad)
        phone_of_token.extend([phone_index] * len(broad))

    matched = _matched_positions(expected, spoken)
    matched_per_word: list[list[int]] = []
    word_start = 0
    for word_phones in expected_per_word:
        word_end = word_start + len(word_phones)
        matched_per_word.append(
            [index for index in matched[word_start:word_end] if index is not None]
        )
        word_start = word_end

    boundaries: list[int | None] = [0]
    for before, after in zip(matched_per_word, matched_per_word[1:], strict=False):
        if not before or not after or after[0] != before[-1] + 1:
            boundaries.append(None)
        elif phone_of_token[before[-1]] == phone_of_token[after[0]]:
            boundaries.append(None)  # inside one phoneme (the n of a syllabic n̩)
        else:
            boundaries.append(phone_of_token[after[0]])
    boundaries.append(len(spoken_broad_per_phone))

    ranges: list[tuple[int, int] | None] = []
    for start, end in zip(boundaries, boundaries[1:], strict=False):
        ranges.append(None if start is None or end is None or start >= end else (start, end))
    return ranges


# --- phoneme comparison --------------------------------------------------------------------


def _broad(phones: Sequence[IpaPhone]) -> list[str]:
    """Broad phones: consonants as ARPAbet, every vowel as "V", and ER as "V R".

    Spelling ER out keeps "for" alike whether spoken "fɔːɹ" (AO R) or reduced to "fɚ" (ER).
    """
    broad: list[str] = []
    for phone in phones:
        for arpabet in phone.arpabet:
            if not is_vowel(arpabet):
                broad.append(arpabet)
            elif arpabet.startswith("ER"):
                broad.extend((VOWEL_CLASS, "R"))
            else:
                broad.append(VOWEL_CLASS)
    return broad


def _joined(parts: Sequence[list[str]]) -> list[str]:
    return [phone for part in parts for phone in part]


def _distance(expected: list[str], spoken: list[str]) -> float:
    """Edit distance divided by the longer length (0 = same, 1 = nothing in common)."""
    longest = max(len(expected), len(spoken))
    return _edit_distance(expected, spoken) / longest if longest else 0.0


def _edit_distance(first: Sequence[str], second: Sequence[str]) -> int:
    previous_row = list(range(len(second) + 1))
    for row, first_item in enumerate(first, start=1):
        current_row = [row]
        for column, second_item in enumerate(second, start=1):
            current_row.append(
                min(
                    previous_row[column] + 1,
                    current_row[column - 1] + 1,
                    previous_row[column - 1] + (first_item != second_item),
                )
            )
        previous_row = current_row
    return previous_row[-1]


def _matched_positions(expected: Sequence[str], spoken: Sequence[str]) -> list[int | None]:
    """For each expected item, the spoken index it is identical to in a minimal edit
    alignment, or None where it was substituted or deleted."""
    rows, columns = len(expected), len(spoken)
    table = [[0] * (columns + 1) for _ in range(rows + 1)]
    for row in range(rows + 1):
        table[row][0] = row
    for column in range(columns + 1):
        table[0][column] = column
    for row in range(1, rows + 1):
        for column in range(1, columns + 1):
            table[row][column] = min(
                table[row - 1][column] + 1,
                table[row][column - 1] + 1,
                table[row - 1][column - 1] + (expected[row - 1] != spoken[column - 1]),
            )

    matched: list[int | None] = [None] * rows
    row, column = rows, columns
    while row > 0 and column > 0:
        same = expected[row - 1] == spoken[column - 1]
        if table[row][column] == table[row - 1][column - 1] + (not same):
            if same:
                matched[row - 1] = column - 1
            row, column = row - 1, column - 1
        elif table[row][column] == table[row - 1][column] + 1:
            row -= 1
        else:
            column -= 1
    return matched
