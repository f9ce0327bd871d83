"""IPA (as written by espeak-ng) to ARPAbet with stress digits.

espeak-ng's en-us phonemes, as Piper and the espeak backend speak them, come out as IPA strings
such as ``tʃˈɜːtʃ`` (church) or ``bˈʌʔn̩`` (button). The aligner, the captions and the lip sync
all work in ARPAbet (the CMU dictionary's 39 phones), so this module converts one to the other:

- stress marks ``ˈ`` / ``ˌ`` stand directly before the vowel they stress (espeak puts them there,
  not at the syllable onset) and become the digit 1 / 2 on that vowel; unmarked vowels get 0;
- multi-character phonemes (diphthongs ``aɪ``, affricates ``tʃ``, long vowels ``ɔː``,
  r-coloured vowels ``ɑːɹ``) are matched longest first;
- syllabic consonants (``n̩``, ``l̩``, ``m̩``) become a reduced vowel plus the consonant, as in
  the CMU dictionary (button: B AH1 T AH0 N);
- the flap ``ɾ`` is T: espeak-ng en-us flaps only a written t (city, little, "at all"), never
  a d (body, ready);
- an ``ɹ`` right after an r-coloured vowel or another R is espeak's linking r (``ɚɹ`` in
  "interact", ``ʊɹɹ`` in "manicurist"); ARPAbet writes the r once, so it is dropped.

Symbols outside English (from names espeak reads with another language's rules) are mapped to
the nearest English phone.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, replace

PRIMARY_STRESS = "ˈ"
SECONDARY_STRESS = "ˌ"
STRESS_DIGITS = {PRIMARY_STRESS: "1", SECONDARY_STRESS: "2"}

# ARPAbet vowels (they carry a stress digit) and consonants: the CMU dictionary's 39 phones.
ARPABET_VOWELS = frozenset(
    {"AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW"}
)
ARPABET_CONSONANTS = frozenset(
    {"B", "CH", "D", "DH", "F", "G", "HH", "JH", "K", "L", "M", "N", "NG", "P", "R", "S", "SH"}
    | {"T", "TH", "V", "W", "Y", "Z", "ZH"}
)

# IPA vowel -> ARPAbet phones; the first phone of each entry is the vowel that takes the stress.
VOWELS: dict[str, tuple[str, ...]] = {
    # diphthongs
    "aɪ": ("AY",),
    "aʊ": ("AW",),
    "eɪ": ("EY",),
    "oʊ": ("OW",),
    "ɔɪ": ("OY",),
    # r-coloured vowels
    "ɚ": ("ER",),
    "ɝ": ("ER",),
    "ɜː": ("ER",),
    "ɜ": ("ER",),
    "ɑːɹ": ("AA", "R"),
    "ɔːɹ": ("AO", "R"),
    "oːɹ": ("AO", "R"),
    "ɛɹ": ("EH", "R"),
    "ɪɹ": ("IH", "R"),
    "ʊɹ": ("UH", "R"),
    # plain vowels
    "iː": ("IY",),
    "i": ("IY",),  # the unstressed "happy" vowel: city S IH1 T IY0
    "ɪ": ("IH",),
    "ᵻ": ("IH",),  # reduced i of "wanted", "reclines"
    "ɛ": ("EH",),
    "æ": ("AE",),
    "ɑː": ("AA",),
    "ɑ": ("AA",),
    "ɒ": ("AA",),
    "ɔː": ("AO",),
    "ɔ": ("AO",),  # the "cloth" vowel: wrong R AO1 NG, off AO1 F
    "ʌ": ("AH",),
    "ə": ("AH",),
    "ɐ": ("AH",),  # reduced a of "aloud"
    "ʊ": ("UH",),
    "uː": ("UW",),
    "u": ("UW",),
    "oː": ("OW",),
    "o": ("OW",),
    "eː": ("EY",),
    "e": ("EY",),
    "a": ("AA",),
    "aː": ("AA",),
    # syllabic consonants: a reduced vowel plus the consonant
    "n̩": ("AH", "N"),
    "l̩": ("AH", "L"),
    "m̩": ("AH", "M"),
    # vowels of other languages, nearest English vowel
    "y": ("UW",),
    "ʏ": ("UH",),
    "ø": ("ER",),
    "œ": ("ER",),
    "ɵ": ("UH",),
    "ɨ": ("IH",),
    "ʉ": ("UW",),
    "ɯ": ("UW",),
    "ɤ": ("AH",),
    "ɘ": ("AH",),
    "ɞ": ("ER",),
    "ɶ": ("AA",),
}

CONSONANTS: dict[str, tuple[str, ...]] = {
    "tʃ": ("CH",),
    "dʒ": ("JH",),
    "p": ("P",),
    "b": ("B",),
    "t": ("T",),
    "d": ("D",),
    "k": ("K",),
    "ɡ": ("G",),
    "g": ("G",),
    "f": ("F",),
    "v": ("V",),
    "θ": ("TH",),
    "ð": ("DH",),
    "s": ("S",),
    "z": ("Z",),
    "ʃ": ("SH",),
    "ʒ": ("ZH",),
    "h": ("HH",),
    "m": ("M",),
    "n": ("N",),
    "ŋ": ("NG",),
    "l": ("L",),
    "ɹ": ("R",),
    "r": ("R",),
    "w": ("W",),
    "j": ("Y",),
    "ɾ": ("T",),  # flap t: city S IH1 T IY0
    "ʔ": ("T",),  # glottal stop for t: button B AH1 T AH0 N
    # consonants of other languages (and rare allophones), nearest English phone
    "x": ("K",),  # Bach B AA1 K
    "ç": ("HH",),
    "χ": ("HH",),
    "ħ": ("HH",),
    "ɦ": ("HH",),
    "ʍ": ("W",),
    "ɫ": ("L",),
    "ɬ": ("L",),
    "ɭ": ("L",),
    "ɺ": ("L",),
    "ʎ": ("L", "Y"),
    "ɲ": ("N", "Y"),
    "ɳ": ("N",),
    "ɴ": ("NG",),
    "ɱ": ("M",),
    "ʁ": ("R",),
    "ʀ": ("R",),
    "ɻ": ("R",),
    "ɽ": ("R",),
    "β": ("B",),
    "ɸ": ("F",),
    "ʋ": ("V",),
    "ɣ": ("G",),
    "ɢ": ("G",),
    "q": ("K",),
    "c": ("K",),
    "ɟ": ("G",),
    "ʈ": ("T",),
    "ɖ": ("D",),
    "ʂ": ("SH",),
    "ʐ": ("ZH",),
    "ɕ": ("SH",),
    "ʑ": ("ZH",),
}

# Marks that change nothing in ARPAbet: palatal off-glide (espeak's "ɪʲ"), aspiration,
# half-length, nasalisation, tie bars, stray length marks, word and linking separators.
IGNORED = frozenset("ʲʰˑ\u0303\u0361\u035cː‿-_ ")

# Matching is done on decomposed text (NFD), the form Piper feeds its model; keys are
# decomposed the same way so "ç" or a nasal vowel match whichever way they were written.
_SYMBOLS = {
    unicodedata.normalize("NFD", key): value for key, value in {**VOWELS, **CONSONANTS}.items()
}
_VOWEL_SYMBOLS = frozenset(unicodedata.normalize("NFD", key) for key in VOWELS)
_LONGEST_SYMBOL = max(len(symbol) for symbol in _SYMBOLS)


class UnknownIpaSymbol(ValueError):
    """An IPA symbol that has no ARPAbet equivalent in the tables."""


@dataclass(frozen=True)
class IpaPhone:
    """One phoneme of an IPA string and where it lies in that string."""

    ipa: str
    """The matched symbol, without its stress mark."""

    arpabet: tuple[str, ...]
    """Its ARPAbet phones, vowels with a stress digit; empty for a dropped linking r."""

    start: int
    """Codepoint offset in the (NFD) string, counting a stress mark before it."""

    end: int
    """Exclusive end offset, counting marks after it that change nothing (length, glides)."""


def normalise_ipa(ipa: str) -> str:
    """The decomposed (NFD) form of an IPA string; offsets from :func:`parse_ipa` refer to it."""
    return unicodedata.normalize("NFD", ipa)


def parse_ipa(ipa: str, *, strict: bool = False) -> list[IpaPhone]:
    """Split espeak IPA into phonemes with their ARPAbet and their codepoint ranges.

    The ranges partition the string: a stress mark belongs to the phoneme after it, ignorable
    marks to the phoneme before them. Unknown symbols are skipped (attached like ignorable
    marks), or raise :class:`UnknownIpaSymbol` when ``strict``.
    """
    ipa = normalise_ipa(ipa)
    phones: list[IpaPhone] = []
    pending_stress = "0"
    phone_start = 0  # where the next phoneme's range begins (at a stress mark, if any)
    position = 0
    previous_ends_in_r = False
    while position < len(ipa):
        char = ipa[position]
        if char in STRESS_DIGITS:
            pending_stress = STRESS_DIGITS[char]
            position += 1
            continue
        symbol = _match_symbol(ipa, position)
        if symbol is None:
            if char not in IGNORED and strict:
                raise UnknownIpaSymbol(f"no ARPAbet for {char!r} (U+{ord(char):04X}) in {ipa!r}")
            position += 1
            if phones:
                phones[-1] = replace(phones[-1], end=position)
                phone_start = position
            continue

        arpabet = list(_SYMBOLS[symbol])
        if symbol in _VOWEL_SYMBOLS:
            arpabet[0] += pending_stress
            pending_stress = "0"
        if arpabet[0] == "R" and previous_ends_in_r:
            # Linking r after an r-coloured vowel or another r: ARPAbet writes the r once.
            arpabet.pop(0)
        if arpabet:
            previous_ends_in_r = _ends_in_r(arpabet[-1])
        position += len(symbol)
        phones.append(IpaPhone(symbol, tuple(arpabet), phone_start, position))
        phone_start = position
    return phones


def ipa_to_arpabet(ipa: str, *, strict: bool = False) -> list[str]:
    """Convert one word's espeak IPA to ARPAbet phones with stress digits on the vowels.

    >>> ipa_to_arpabet("nˈuːz")
    ['N', 'UW1', 'Z']
    """
    return [phone for parsed in parse_ipa(ipa, strict=strict) for phone in parsed.arpabet]


def _match_symbol(ipa: str, position: int) -> str | None:
    """The longest table symbol starting at ``position``, if any."""
    for length in range(min(_LONGEST_SYMBOL, len(ipa) - position), 0, -1):
        candidate = ipa[position : position + length]
        if candidate in _SYMBOLS:
            return candidate
    return None


def _ends_in_r(phone: str) -> bool:
    return phone == "R" or phone.rstrip("012") == "ER"


def is_arpabet(phone: str) -> bool:
    """True for an ARPAbet phone: a consonant, or a vowel with a stress digit 0-2."""
    if phone in ARPABET_CONSONANTS:
        return True
    return len(phone) == 3 and phone[:2] in ARPABET_VOWELS and phone[2] in "012"


def is_vowel(phone: str) -> bool:
    """True for an ARPAbet vowel, with or without its stress digit."""
    return phone.rstrip("012") in ARPABET_VOWELS
