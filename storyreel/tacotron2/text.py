"""Text front end of the Tacotron 2 backend: symbols, encoding and chunking (no torch).

Symbol table (148 entries, the inventory the released English models were trained with; the
embedding row of a symbol is its position here): the pad ``_``, the special ``-``, ten
punctuation marks including the space, the 52 ASCII letters (upper case first), and the 84
ARPAbet symbols of CMUdict (15 vowels with no/0/1/2 stress, 24 consonants) in sorted order,
each prefixed with ``@`` so that they never collide with letters.

The released LJSpeech models read lower-case characters; ARPAbet in braces (``{HH AH0 L OW1}``)
selects the phoneme symbols, which only models trained with them pronounce well. The text
comes from transcript.json, which the transcript step already normalised (numbers, money,
abbreviations spelled out), so the cleaning here is only: ASCII folding, lower case, symbols
outside the table dropped, runs of spaces collapsed.

A sentence longer than the decoder can say in ``max_decoder_steps`` is split into chunks: the
number of decoder steps a text needs is estimated from its symbol count, and chunks end at a
comma (or semicolon, colon, dash) where possible, else between words.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

PAD = "_"
SPECIAL = "-"
PUNCTUATION = "!'(),.:;? "
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
ARPABET_VOWELS = ["AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY"]
ARPABET_VOWELS += ["IH", "IY", "OW", "OY", "UH", "UW"]
ARPABET_CONSONANTS = ["B", "CH", "D", "DH", "F", "G", "HH", "JH", "K", "L", "M", "N", "NG"]
ARPABET_CONSONANTS += ["P", "R", "S", "SH", "T", "TH", "V", "W", "Y", "Z", "ZH"]
ARPABET = sorted(
    [vowel + stress for vowel in ARPABET_VOWELS for stress in ("", "0", "1", "2")]
    + ARPABET_CONSONANTS
)
SYMBOLS: list[str] = [PAD, SPECIAL, *PUNCTUATION, *LETTERS, *("@" + phone for phone in ARPABET)]
SYMBOL_IDS: dict[str, int] = {symbol: index for index, symbol in enumerate(SYMBOLS)}

# Decoder steps (mel frames of 256 samples at 22.05 kHz, 86 per second) a symbol takes. The
# LJSpeech voice speaks about 15 characters a second, some 5.7 frames each; 7 leaves room for
# slower passages, so that a chunk estimated to fit does fit.
FRAMES_PER_SYMBOL = 7.0

# Where a long sentence is best split: after a clause mark.
_CLAUSE_BREAK = re.compile(r"[,;:\u2013\u2014]|\s-\s")
# Typographic marks with an equivalent in the table.
_TRANSLATE = str.maketrans(
    {"\u2018": "'", "\u2019": "'", "\u201c": None, "\u201d": None, "\u2013": "-", "\u2014": "-"}
)


@dataclass
class ChunkWord:
    """A transcript word inside a chunk."""

    index: int  # the word's index in its sentence
    word: str
    start: int  # character offsets into the chunk text
    end: int
    phones: list[str] = field(default_factory=list)  # ARPAbet with stress


@dataclass
class Chunk:
    """Part of a sentence synthesised in one decoder run."""

    sentence: int  # transcript sentence index
    paragraph: int
    text: str
    words: list[ChunkWord]
    symbol_ids: list[int] = field(default_factory=list)
    # For each symbol: the position in ``words`` of the word it spells, or -1.
    symbol_words: list[int] = field(default_factory=list)


def estimated_steps(symbol_count: int) -> int:
    return math.ceil(symbol_count * FRAMES_PER_SYMBOL)


def max_chunk_symbols(max_decoder_steps: int) -> int:
    """The most symbols a chunk may have so that its estimate fits the decoder's limit."""
    return max(1, math.floor(max_decoder_steps / FRAMES_PER_SYMBOL))


def clean_characters(text: str) -> str:
    """Lower-case ASCII with only symbols of the table; whitespace runs become one space."""
    folded = unicodedata.normalize("NFKD", text.translate(_TRANSLATE))
    ascii_text = "".join(ch for ch in folded if ord(ch) < 128).lower()
    kept = "".join(ch if ch in SYMBOL_IDS else (" " if ch.isspace() else "") for ch in ascii_text)
    return re.sub(" +", " ", kept)


def encode(text: str, words: Sequence[ChunkWord], use_arpabet: bool) -> tuple[list[int], list[int]]:
    """Symbol ids of ``text`` and, per symbol, the position of its word (or -1).

    With ``use_arpabet`` a word with a pronunciation is spoken as its ARPAbet symbols (as if
    written ``{HH AH0 L OW1}``); all other text is spelled with characters.
    """
    ids: list[int] = []
    owners: list[int] = []
    position = 0

    def spell(piece: str, owner: int) -> None:
        for ch in clean_characters(piece):
            if ch == " " and (not ids or SYMBOLS[ids[-1]] == " "):
                continue  # no leading or doubled spaces
            ids.append(SYMBOL_IDS[ch])
            owners.append(owner)

    for number, word in enumerate(words):
        spell(text[position : word.start], -1)
        if use_arpabet and word.phones and all(p.upper() in ARPABET for p in word.phones):
            for phone in word.phones:
                ids.append(SYMBOL_IDS["@" + phone.upper()])
                owners.append(number)
        else:
            spell(text[word.start : word.end], number)
        position = word.end
    spell(text[position:], -1)
    while ids and SYMBOLS[ids[-1]] == " ":
        ids.pop()
        owners.pop()
    return ids, owners


def sentence_chunks(
    sentence: Mapping,
    max_decoder_steps: int,
    use_arpabet: bool,
    phones: Sequence[list[str]] | None = None,
) -> list[Chunk]:
    """The chunks of one transcript.json sentence, each estimated to fit the decoder.

    ``phones`` holds each word's ARPAbet (spoken instead of its letters with ``use_arpabet``).
    A sentence with nothing to speak has no chunks.
    """
    text = sentence["text"]
    offset = sentence["start_offset"]
    words = [
        ChunkWord(
            index, entry["word"], entry["start_offset"] - offset, entry["end_offset"] - offset,
            list(phones[index]) if phones else [],
        )
        for index, entry in enumerate(sentence["words"])
    ]  # fmt: skip

    limit = max_chunk_symbols(max_decoder_steps)
    chunks = []
    for start, end, first, last in _split(text, words, limit, use_arpabet):
        piece_words = [
            ChunkWord(w.index, w.word, w.start - start, w.end - start, w.phones)
            for w in words[first:last]
        ]
        piece = text[start:end]
        ids, owners = encode(piece, piece_words, use_arpabet)
        if not ids:
            continue
        chunks.append(
            Chunk(sentence["index"], sentence["paragraph"], piece, piece_words, ids, owners)
        )
    return chunks


def _split(
    text: str, words: Sequence[ChunkWord], limit: int, use_arpabet: bool
) -> list[tuple[int, int, int, int]]:
    """(start, end, first word, end word) of each chunk of ``text``.

    Greedy: each chunk runs to the furthest clause break that keeps it within ``limit``
    symbols and fills at least half of it, else the furthest word break; a single word longer
    than the limit is a chunk of its own (a word is never cut).
    """

    def size(start: int, end: int, first: int, last: int) -> int:
        piece_words = [
            ChunkWord(w.index, w.word, w.start - start, w.end - start, w.phones)
            for w in words[first:last]
        ]
        return len(encode(text[start:end], piece_words, use_arpabet)[0])

    if not words or size(0, len(text), 0, len(words)) <= limit:
        return [(0, len(text), 0, len(words))]

    pieces = []
    start, first = 0, 0
    while first < len(words):
        best_clause = best_word = None
        for last in range(first + 1, len(words) + 1):
            # A chunk ending before word `last` takes the text up to that word's start (the
            # punctuation after the previous word stays with it); the final chunk takes the rest.
            end = words[last].start if last < len(words) else len(text)
            symbols = size(start, end, first, last)
            if symbols > limit:
                break
            if last == len(words):
                best_clause = best_word = (end, last)
                break
            best_word = (end, last)
            # A clause break wins unless it would leave a chunk under half the limit.
            clause_mark = _CLAUSE_BREAK.search(text[words[last - 1].end : words[last].start])
            if clause_mark and 2 * symbols >= limit:
                best_clause = (end, last)
        choice = best_clause or best_word
        if choice is None:  # the next word alone is over the limit
            last = first + 1
            choice = (words[last].start if last < len(words) else len(text), last)
        end, last = choice
        pieces.append((start, end, first, last))
        start, first = end, last
    return pieces
