"""Text normalisation: turn a written news story into the words the presenter reads.

The synthesiser, the aligner and the captions all work from the same normalised text, so
everything a reader would say differently from how it is written is spelled out here once:
numbers, years, money, percentages, units, ordinals, dates, times and abbreviations. Sentence
punctuation is kept because the synthesiser uses it for prosody; symbols nobody can say (emoji,
dingbats, stray marks) are dropped. The output contains no digits.

Number words come from num2words. Its English output is reshaped into one token per word
("twenty-one" -> "twenty one", no thousands commas) and into the American style of the
presenter voice ("one hundred five", not "one hundred and five").

Public API:
    normalise(text) -> str
    split_sentences(paragraph) -> list[str]
    build_transcript(story) -> dict          (the transcript.json structure, docs/formats.md)
    say_cardinal / say_ordinal / say_year / say_number: the number words used throughout
"""

import calendar
import functools
import re
import unicodedata
from collections.abc import Callable
from typing import Any, NamedTuple

from num2words import num2words

__all__ = [
    "WORD_RE",
    "build_transcript",
    "normalise",
    "say_cardinal",
    "say_number",
    "say_ordinal",
    "say_year",
    "split_sentences",
]

# A transcript word: letters with inner apostrophes (docs/formats.md).
WORD_RE = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")

# Limits for one synthesiser/aligner unit; longer sentences are split at clause boundaries.
MAX_SENTENCE_CHARS = 300
MAX_SENTENCE_WORDS = 50
# A clause split must leave at least this many words on each side to be worth taking.
MIN_CLAUSE_WORDS = 3

_LETTER = r"[^\W\d_]"
# A written number: "1,234,567.5", "1234", "3.5" or ".5".
_NUMBER = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?(?!\d)|\d+(?:\.\d+)?|\.\d+"
_INTEGER = r"\d{1,3}(?:,\d{3})+(?!\d)|\d+"
_RANGE_DASH = r"(?:\s?[-–]\s?|\s+to\s+)"

# Long digit strings are identifiers or phone numbers, not amounts; read them digit by digit.
_MAX_CARDINAL_DIGITS = 15
_MAX_AMOUNT_DIGITS = 33
_YEAR_RANGE = range(1000, 2100)

# Words that commonly open a sentence. Used to decide whether a full stop after an ambiguous
# abbreviation ("U.S.", "Inc.", "Jr.") also ends the sentence: "in the U.S. The talks..." does,
# "the U.S. Senate" does not.
# fmt: off
_SENTENCE_STARTERS = frozenset({
    "A", "After", "Also", "Although", "An", "And", "As", "At", "Before", "But", "By", "During",
    "Even", "For", "From", "He", "Her", "Here", "His", "How", "However", "I", "If", "In", "It",
    "Its", "Last", "Many", "Meanwhile", "More", "Most", "My", "Neither", "No", "Now", "On",
    "One", "Only", "Or", "Our", "She", "Since", "So", "Some", "Still", "That", "The", "Their",
    "Then", "There", "These", "They", "This", "Those", "Though", "Today", "Tomorrow", "We",
    "What", "When", "Where", "While", "Who", "Why", "With", "Yesterday", "Yet", "You",
})
# fmt: on


# ---------------------------------------------------------------------------------------------
# Number words
# ---------------------------------------------------------------------------------------------

_BRITISH_AND_RE = re.compile(r" and\b")


def _tidy_number_words(words: str) -> str:
    """One token per word, no thousands commas, no British "and" inside numbers."""
    return _BRITISH_AND_RE.sub("", words.replace(",", "").replace("-", " "))


def _say_digits(digits: str) -> str:
    """'0044' -> 'zero zero four four' (identifiers, codes, numbers with leading zeros)."""
    return " ".join(num2words(int(digit)) for digit in digits if digit.isdigit())


@functools.lru_cache(maxsize=4096)
def say_cardinal(number: str) -> str:
    """'1,234' -> 'one thousand two hundred thirty four'; '3.50' -> 'three point five zero'."""
    plain = number.replace(",", "")
    integer, _, fraction = plain.partition(".")
    has_leading_zero = len(integer) > 1 and integer.startswith("0")
    # Digit grouping ("1,000,000") marks an amount however long; num2words names up to 10**33.
    max_digits = _MAX_AMOUNT_DIGITS if "," in number else _MAX_CARDINAL_DIGITS
    if len(integer) > max_digits or (has_leading_zero and not fraction):
        return _say_digits(plain)
    whole = _tidy_number_words(num2words(int(integer or "0")))
    if fraction:
        # Digits after the point are read one by one, as written: num2words would drop the
        # trailing zeros and read "Web 2.0" as "Web two".
        return f"{whole} point {_say_digits(fraction)}"
    return whole


@functools.lru_cache(maxsize=1024)
def say_ordinal(number: str) -> str:
    """'22' -> 'twenty second'."""
    return _tidy_number_words(num2words(int(number.replace(",", "")), to="ordinal"))


@functools.lru_cache(maxsize=1024)
def say_year(year: int) -> str:
    """1999 -> 'nineteen ninety nine', 2005 -> 'two thousand five', 2021 -> 'twenty twenty one'."""
    return _tidy_number_words(num2words(year, to="year"))


def _is_year(number: str) -> bool:
    # House style writes counts of a thousand or more with commas ("1,500 people"), so a bare
    # four-digit integer in this range is read as a year.
    return len(number) == 4 and number.isdigit() and int(number) in _YEAR_RANGE


def say_number(number: str) -> str:
    """A free-standing number: a year when it looks like one, else a cardinal."""
    return say_year(int(number)) if _is_year(number) else say_cardinal(number)


def _pluralise_last_word(words: str) -> str:
    """'nineteen ninety' -> 'nineteen nineties', 'one hundred' -> 'one hundreds'."""
    head, _, last = words.rpartition(" ")
    last = last[:-1] + "ies" if last.endswith("y") else last + "s"
    return f"{head} {last}" if head else last


def _say_plural_number(number: str) -> str:
    """Decades and plural numbers: '1990' -> 'nineteen nineties', '1000' -> 'thousands'."""
    value = int(number)
    if _is_year(number) and value % 1000:
        return _pluralise_last_word(say_year(value))
    words = say_cardinal(number)
    if re.fullmatch(r"10*", number) and value >= 100:
        # "100s of people" is "hundreds of people", not "one hundreds".
        words = words.removeprefix("one ")
    return _pluralise_last_word(words)


# ---------------------------------------------------------------------------------------------
# Helpers for substitution rules
# ---------------------------------------------------------------------------------------------

Replacement = Callable[[re.Match[str]], str]


def _at_sentence_start(text: str, position: int) -> bool:
    """True when only opening quotes/brackets stand between position and a sentence start."""
    # Look back a few characters only: whitespace is collapsed, so at most a space and a
    # quote or bracket separate a word from the punctuation before it.
    window_start = max(0, position - 8)
    before = text[window_start:position].rstrip(" \"'([")
    if not before:
        return window_start == 0
    return before[-1] in ".!?"


def _substitute(pattern: re.Pattern[str], replace: Replacement, text: str) -> str:
    """pattern.sub for spoken forms.

    A replacement that opens a sentence is capitalised ("$5 was" -> "Five dollars was"), and
    one written against a letter or digit is set apart from it by a space.
    """

    def replace_and_capitalise(match: re.Match[str]) -> str:
        spoken = replace(match)
        if not spoken or spoken == match.group(0):
            return spoken
        text, start, end = match.string, match.start(), match.end()
        if spoken[0].islower() and _at_sentence_start(text, start):
            spoken = spoken[0].upper() + spoken[1:]
        # Keep the words apart from what is written against them: "6′2″" -> "six feet two".
        if spoken[-1].isalnum() and text[end : end + 1].isalnum():
            spoken += " "
        if spoken[0].isalnum() and text[start - 1 : start].isalnum():
            spoken = " " + spoken
        return spoken

    return pattern.sub(replace_and_capitalise, text)


_NEXT_WORD_RE = re.compile(r"\s+[\"'(\[]*(" + _LETTER + r"+)")


def _full_stop_ends_sentence(text: str, end: int, *, any_capital: bool) -> bool:
    """Whether the full stop of an abbreviation ending at `end` also ends the sentence.

    True at the end of the text and before a closing quote or bracket. Before a capitalised
    word it is true when `any_capital` (abbreviations that seldom precede a name, like "etc.")
    or when the word is a usual sentence opener.
    """
    rest = text[end : end + 40]
    if not rest.strip() or rest[0] in '")]' or re.match(r"'(\s|$)", rest):
        return True
    next_word = _NEXT_WORD_RE.match(rest)
    if not next_word or not next_word.group(1)[0].isupper():
        return False
    return any_capital or next_word.group(1) in _SENTENCE_STARTERS


def _expansion(
    spoken: str, *, can_end_sentence: bool = False, any_capital: bool = False
) -> Replacement:
    """A replacement for an abbreviation written with a full stop.

    The full stop is dropped so that it cannot split the sentence, and put back after the
    spoken form when it also ends the sentence.
    """

    def replace(match: re.Match[str]) -> str:
        if can_end_sentence and _full_stop_ends_sentence(
            match.string, match.end(), any_capital=any_capital
        ):
            return spoken + "."
        return spoken

    return replace


# ---------------------------------------------------------------------------------------------
# Unicode clean-up
# ---------------------------------------------------------------------------------------------

_CHARACTER_MAP = str.maketrans(
    {
        **dict.fromkeys("‘’‚‛´`", "'"),
        **dict.fromkeys("“”„‟«»‹›", '"'),
        **dict.fromkeys("\u00a0\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008", " "),
        **dict.fromkeys("\u2009\u200a\u202f\u205f\u3000\t\r\n\f\v", " "),
        **dict.fromkeys("\u2010\u2011\u2212\ufe63\uff0d", "-"),  # hyphens and the minus sign
        **dict.fromkeys("\u2012\u2013", "–"),  # figure dash, en dash
        **dict.fromkeys("\u2014\u2015", "—"),  # em dash, horizontal bar
        "\u2044": "/",  # fraction slash
        "№": "No.",
        "™": "",  # NFKC would turn these into letters that would then be read out
        "℠": "",
    }
)
_VULGAR_FRACTION_RE = re.compile(r"(\d*)\s?([\u00bc-\u00be\u2150-\u215e])")
_SQUARED_UNIT_RE = re.compile(r"\b(km|m|mi|ft|cm)([²³])")
_SUPERSCRIPT_DIGITS_RE = re.compile(r"[¹²³\u2070-\u2079]")  # footnote markers
# Unicode categories nobody can say. Other symbols (emoji, dingbats) stand between words and
# become a space; modifier symbols (skin tones), format characters (zero-width spaces, soft
# hyphens, joiners), enclosing marks (keycaps) and private use characters sit inside words or
# emoji sequences and are removed.
_SYMBOL_CATEGORIES = frozenset({"So"})
_INVISIBLE_CATEGORIES = frozenset({"Sk", "Cf", "Co", "Cs", "Cn", "Me"})
_SPEAKABLE_SYMBOLS = frozenset("°")
_VARIATION_SELECTOR_RE = re.compile(r"[\ufe00-\ufe0f\U000e0100-\U000e01ef]")


def _say_vulgar_fraction(match: re.Match[str]) -> str:
    # The Unicode name spells the fraction: "VULGAR FRACTION THREE QUARTERS".
    fraction = unicodedata.name(match.group(2)).removeprefix("VULGAR FRACTION ").lower()
    if not match.group(1):
        return f" {fraction} "
    # "2½" is "two and a half".
    return f"{match.group(1)} and {re.sub(r'^one ', 'a ', fraction)} "


@functools.lru_cache(maxsize=1024)
def _speakable_form(character: str) -> str:
    """The character itself, a space (emoji and other symbols) or nothing (invisibles)."""
    if character in _SPEAKABLE_SYMBOLS:
        return character
    category = unicodedata.category(character)
    if category in _SYMBOL_CATEGORIES:
        return " "
    return "" if category in _INVISIBLE_CATEGORIES else character


def _clean_unicode(text: str) -> str:
    text = text.translate(_CHARACTER_MAP)
    text = _VULGAR_FRACTION_RE.sub(_say_vulgar_fraction, text)
    text = _SQUARED_UNIT_RE.sub(
        lambda m: ("sq " if m.group(2) == "²" else "cu ") + m.group(1), text
    )
    text = _SUPERSCRIPT_DIGITS_RE.sub("", text)
    # NFKC folds full-width forms, ligatures, "…" -> "...", "℃" -> "°C", "①" -> "1".
    text = unicodedata.normalize("NFKC", text)
    text = _VARIATION_SELECTOR_RE.sub("", text)
    text = "".join(_speakable_form(character) for character in text)
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------------
# Dates and times
# ---------------------------------------------------------------------------------------------

_MONTHS = {name: name for name in calendar.month_name if name}
_MONTHS |= {"Jan": "January", "Feb": "February", "Mar": "March", "Apr": "April"}
_MONTHS |= {"Jun": "June", "Jul": "July", "Aug": "August", "Sep": "September"}
_MONTHS |= {"Sept": "September", "Oct": "October", "Nov": "November", "Dec": "December"}
_MONTH_ALTERNATION = "|".join(sorted(_MONTHS, key=len, reverse=True))

_ISO_DATE_RE = re.compile(r"(?<![\d-])(\d{4})-(\d{2})-(\d{2})(?![\d-])")
_MONTH_DAY_RE = re.compile(
    rf"\b(?P<month>{_MONTH_ALTERNATION})\.?\s+(?P<day>\d{{1,2}})(?:st|nd|rd|th)?"
    rf"(?!\d|[.:]\d|{_LETTER}|\s?%)"
)
_DAY_MONTH_RE = re.compile(
    rf"(?<![\d.,])(?P<day>\d{{1,2}})(?:st|nd|rd|th)?\s+(?P<month>{_MONTH_ALTERNATION})\b"
)
_AMPM = r"(?P<ampm>[aApP]\.[mM]\.|[aApP][mM])(?!" + _LETTER + ")"
_CLOCK_TIME_RE = re.compile(
    r"(?<![\d:.,])(?P<hour>\d{1,2}):(?P<minute>\d{2})(?![\d:])(?:\s?" + _AMPM + ")?"
)
# British style "9.30am": a full stop between hour and minutes, only with am/pm after it.
_DOTTED_CLOCK_TIME_RE = re.compile(r"(?<![\d:.,])(?P<hour>\d{1,2})\.(?P<minute>\d{2})\s?" + _AMPM)
_HOUR_AMPM_RE = re.compile(r"(?<![\d:.,])(?P<hour>\d{1,2})\s?" + _AMPM)


def _say_iso_date(match: re.Match[str]) -> str:
    year, month, day = (int(part) for part in match.groups())
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return match.group(0)
    return f"{calendar.month_name[month]} {say_ordinal(str(day))}, {say_year(year)}"


def _say_month_day(match: re.Match[str]) -> str:
    day = int(match.group("day"))
    if not 1 <= day <= 31:
        return match.group(0)
    return f"{_MONTHS[match.group('month')]} {say_ordinal(str(day))}"


def _say_day_month(match: re.Match[str]) -> str:
    day = int(match.group("day"))
    if not 1 <= day <= 31:
        return match.group(0)
    # "on 5 March" is read "on the fifth of March"; "the 5 March vote" already has its "the".
    preceding = match.string[max(0, match.start() - 4) : match.start()]
    article = "" if preceding.lower() == "the " else "the "
    return f"{article}{say_ordinal(str(day))} of {_MONTHS[match.group('month')]}"


def _say_ampm(match: re.Match[str]) -> str:
    # Written as capitals the synthesiser spells them out ("a m" would be read "uh em").
    spoken = " AM" if match.group("ampm")[0] in "aA" else " PM"
    if match.group("ampm").endswith(".") and _full_stop_ends_sentence(
        match.string, match.end(), any_capital=False
    ):
        spoken += "."
    return spoken


def _say_clock_time(match: re.Match[str]) -> str:
    hour, minute = int(match.group("hour")), int(match.group("minute"))
    has_ampm = match.group("ampm") is not None
    if hour > (12 if has_ampm else 24) or minute > 59:
        return match.group(0)
    spoken = say_cardinal(str(hour))
    if minute == 0:
        if not has_ampm:
            spoken += " o'clock" if hour <= 12 else " hundred"
    elif minute < 10:
        spoken += " oh " + say_cardinal(str(minute))
    else:
        spoken += " " + say_cardinal(str(minute))
    return spoken + (_say_ampm(match) if has_ampm else "")


def _say_hour_ampm(match: re.Match[str]) -> str:
    if int(match.group("hour")) > 12:
        return match.group(0)
    return say_cardinal(match.group("hour")) + _say_ampm(match)


# ---------------------------------------------------------------------------------------------
# Abbreviations
# ---------------------------------------------------------------------------------------------

# Titles precede a name, so their full stop never ends a sentence.
_TITLES = {
    "Mr": "Mister",
    "Mrs": "Missus",
    "Ms": "Miz",
    "Dr": "Doctor",
    "Prof": "Professor",
    "Gen": "General",
    "Sen": "Senator",
    "Rep": "Representative",
    "Gov": "Governor",
    "Pres": "President",
    "Lt": "Lieutenant",
    "Col": "Colonel",
    "Capt": "Captain",
    "Sgt": "Sergeant",
    "Det": "Detective",
    "Insp": "Inspector",
    "Supt": "Superintendent",
    "Rev": "Reverend",
    "Fr": "Father",
    "Mt": "Mount",
    "Ft": "Fort",
}
# British style writes these without a full stop ("Mr Smith"); the others are too ambiguous
# without one ("Gen Z", "Rep" as a word).
_TITLES_WITHOUT_STOP = ("Mrs", "Mr", "Ms", "Dr", "Prof")


def _alternation(words) -> str:
    return "|".join(re.escape(word) for word in sorted(words, key=len, reverse=True))


_TITLE_RE = re.compile(rf"\b({_alternation(_TITLES)})\.(?=\s)")
_TITLE_WITHOUT_STOP_RE = re.compile(rf"\b({_alternation(_TITLES_WITHOUT_STOP)})(?=\s+[A-Z])")
_SAINT_OR_STREET_RE = re.compile(r"\bSt\b(\.?)")
_PREVIOUS_WORD_RE = re.compile(r"(?<![\w.])(\w+)\s+$")

# (pattern, spoken form, can the full stop end a sentence, does any capital after it mean so)
_ABBREVIATIONS: list[tuple[str, str, bool, bool]] = [
    (r"\be\.g\.", "for example", True, False),
    (r"\bi\.e\.", "that is", True, False),
    (r"\betc\.", "et cetera", True, True),
    (r"\bapprox\.", "approximately", True, False),
    (r"\bca\.(?=\s?\d)", "circa", False, False),
    (r"\bvs\.?(?=\s)", "versus", False, False),
    (r"(?<=\s)v\.(?=\s[A-Z])", "versus", False, False),
    (r"\b[Nn]o\.\s?(?=\d)|\bNo\s(?=\d)", "number ", False, False),
    (r"\b[Nn]os\.\s?(?=\d)", "numbers ", False, False),
    (r"#(?=\d)", "number ", False, False),
    (r"\bPh\.D\.", "PhD", True, False),
    (r"\ba\.m\.", "AM", True, False),
    (r"\bp\.m\.", "PM", True, False),
    (r"\bJr\.", "Junior", True, False),
    (r"\bSr\.", "Senior", True, False),
    (r"\bInc\.", "Inc", True, False),
    (r"\bLtd\.", "Limited", True, False),
    (r"\bCorp\.", "Corporation", True, False),
    (r"\bBros\.", "Brothers", True, False),
    (r"\bDept\.", "Department", True, False),
    (r"\bGovt\.", "Government", True, False),
    (r"\bUniv\.", "University", True, False),
    (r"\bAve\.", "Avenue", True, False),
    (r"\bRd\.", "Road", True, False),
    (r"\bBlvd\.", "Boulevard", True, False),
]
_ABBREVIATION_RULES = [
    (re.compile(pattern), spoken, can_end, any_capital)
    for pattern, spoken, can_end, any_capital in _ABBREVIATIONS
]
_MONTH_ABBREVIATION_RE = re.compile(
    rf"\b({_alternation(month for month in _MONTHS if len(month) <= 4)})\.(?=\s?\d)"
)
_WORLD_WAR_RE = re.compile(r"\bWorld War (III|II|I)\b")
# "Elizabeth II" -> "Elizabeth the second". A single letter ("Malcolm X", "Henry V") is left
# alone: it is far more often a letter than a numeral.
_REGNAL_NUMBER_RE = re.compile(
    r"\b(?P<name>[A-Z][a-z]+) (?P<numeral>(?=[IVX]{2,}\b)X{0,3}(?:IX|IV|V?I{0,3}))\b"
)
# After these words a Roman numeral is a plain number: "Part II" -> "Part two".
_NUMBERED_PART_WORDS = frozenset(
    {"Act", "Article", "Book", "Chapter", "Class", "Part", "Phase", "Stage", "Title", "Type"}
)
_ROMAN_DIGITS = {"I": 1, "V": 5, "X": 10}
_DOTTED_ACRONYM_RE = re.compile(rf"(?<![\w.])((?:{_LETTER}\.){{2,}})")
_INITIAL_RE = re.compile(r"(?<![\w.])([A-Z])\.(?=\s+[A-Z])")
# Two-letter country names that would otherwise be read as the words "us" and "un".
_SPELLED_INITIALISMS_RE = re.compile(r"\b(US|UK|UN|EU)\b(?!\$)")


def _say_saint_or_street(match: re.Match[str]) -> str:
    text, has_stop = match.string, bool(match.group(1))
    previous_word = _PREVIOUS_WORD_RE.search(text, max(0, match.start() - 40), match.start())
    # "Main St.": a street name is a capitalised word or a house number, not the first word of
    # a sentence ("Visiting St. Louis").
    after_street_name = (
        previous_word is not None
        and (previous_word.group(1)[0].isupper() or previous_word.group(1).isdigit())
        and not _at_sentence_start(text, previous_word.start(1))
    )
    followed_by_name = re.match(r"\s+[A-Z]", text[match.end() : match.end() + 2]) is not None
    if followed_by_name and not after_street_name:
        return "Saint"
    if not (has_stop or after_street_name):
        return match.group(0)
    if has_stop and _full_stop_ends_sentence(text, match.end(), any_capital=False):
        return "Street."
    return "Street"


def _roman_value(numeral: str) -> int:
    """'XIV' -> 14: a digit before a larger one is subtracted."""
    values = [_ROMAN_DIGITS[digit] for digit in numeral]
    return sum(
        -value if value < following else value
        for value, following in zip(values, [*values[1:], 0], strict=True)
    )


def _say_regnal_number(match: re.Match[str]) -> str:
    name, value = match.group("name"), str(_roman_value(match.group("numeral")))
    if name in _NUMBERED_PART_WORDS:
        return f"{name} {say_cardinal(value)}"
    return f"{name} the {say_ordinal(value)}"


def _say_initial(match: re.Match[str]) -> str:
    """An initial: "John F. Kennedy" -> "John F Kennedy"; "Plan B. The" keeps its stop."""
    if _full_stop_ends_sentence(match.string, match.end(), any_capital=False):
        return match.group(1) + "."
    return match.group(1)


def _say_dotted_acronym(match: re.Match[str]) -> str:
    letters = " ".join(match.group(1).replace(".", "").upper())
    if _full_stop_ends_sentence(match.string, match.end(), any_capital=False):
        return letters + "."
    return letters


def _expand_abbreviations(text: str) -> str:
    text = _WORLD_WAR_RE.sub(
        lambda m: "World War " + {"I": "One", "II": "Two", "III": "Three"}[m.group(1)], text
    )
    text = _REGNAL_NUMBER_RE.sub(_say_regnal_number, text)
    text = _TITLE_RE.sub(lambda m: _TITLES[m.group(1)], text)
    text = _TITLE_WITHOUT_STOP_RE.sub(lambda m: _TITLES[m.group(1)], text)
    text = _SAINT_OR_STREET_RE.sub(_say_saint_or_street, text)
    text = _MONTH_ABBREVIATION_RE.sub(lambda m: _MONTHS[m.group(1)], text)
    for pattern, spoken, can_end, any_capital in _ABBREVIATION_RULES:
        replace = _expansion(spoken, can_end_sentence=can_end, any_capital=any_capital)
        text = _substitute(pattern, replace, text)
    text = _DOTTED_ACRONYM_RE.sub(_say_dotted_acronym, text)
    text = _INITIAL_RE.sub(_say_initial, text)
    return _SPELLED_INITIALISMS_RE.sub(lambda m: " ".join(m.group(1)), text)


# ---------------------------------------------------------------------------------------------
# Money, percentages and units
# ---------------------------------------------------------------------------------------------


class Currency(NamedTuple):
    singular: str
    plural: str
    minor_singular: str | None
    minor_plural: str | None


# num2words' own currency mode reads GBP as "pounds sterling" and whole numbers as cents, so
# only the number words come from it.
_CURRENCIES = {
    "US$": Currency("U S dollar", "U S dollars", "cent", "cents"),
    "$": Currency("dollar", "dollars", "cent", "cents"),
    "€": Currency("euro", "euros", "cent", "cents"),
    "£": Currency("pound", "pounds", "penny", "pence"),
    "¥": Currency("yen", "yen", None, None),
    "₹": Currency("rupee", "rupees", "paisa", "paise"),
}
_SCALES = {
    "thousand": "thousand",
    "million": "million",
    "billion": "billion",
    "trillion": "trillion",
    "k": "thousand",
    "m": "million",
    "mn": "million",
    "b": "billion",
    "bn": "billion",
    "tn": "trillion",
}
_CURRENCY = f"(?:{_alternation(_CURRENCIES)})"
# Full scale words may follow a space; the short forms are written on the number ("£3bn").
_SCALE = rf"(?:\s?(?:thousand|million|billion|trillion)\b|(?:bn|mn|tn|[kKmMbB])(?!{_LETTER}))"
_MONEY_RE = re.compile(
    rf"(?P<currency>{_CURRENCY})\s?(?P<amount>{_NUMBER})(?P<scale>{_SCALE})?"
    rf"(?:{_RANGE_DASH}{_CURRENCY}?\s?(?P<amount2>{_NUMBER})(?P<scale2>{_SCALE})?)?"
)
# UK style "3.2m people", "£" or not; a whole number with "m" is often metres, so left alone.
_BARE_SCALE_RE = re.compile(rf"(?<![\d.,])(?P<amount>{_NUMBER})(?P<scale>bn|tn)(?!{_LETTER})")
_BARE_MILLIONS_RE = re.compile(rf"(?<![\d.,])(?P<amount>\d+\.\d+)m(?!{_LETTER})")


class Unit(NamedTuple):
    singular: str
    plural: str


_UNITS = {
    "%": Unit("percent", "percent"),
    # NFKC writes the double prime as two primes: 6′2″ -> 6′2′′.
    "′′": Unit("inch", "inches"),
    "′": Unit("foot", "feet"),
    "°C": Unit("degree Celsius", "degrees Celsius"),
    "°F": Unit("degree Fahrenheit", "degrees Fahrenheit"),
    "°": Unit("degree", "degrees"),
    "km/h": Unit("kilometer per hour", "kilometers per hour"),
    "kph": Unit("kilometer per hour", "kilometers per hour"),
    "mph": Unit("mile per hour", "miles per hour"),
    "sq km": Unit("square kilometer", "square kilometers"),
    "sq mi": Unit("square mile", "square miles"),
    "sq ft": Unit("square foot", "square feet"),
    "sq m": Unit("square meter", "square meters"),
    "cu m": Unit("cubic meter", "cubic meters"),
    "km": Unit("kilometer", "kilometers"),
    "cm": Unit("centimeter", "centimeters"),
    "mm": Unit("millimeter", "millimeters"),
    "mi": Unit("mile", "miles"),
    "ft": Unit("foot", "feet"),
    "kg": Unit("kilogram", "kilograms"),
    "mg": Unit("milligram", "milligrams"),
    "lbs": Unit("pound", "pounds"),
    "lb": Unit("pound", "pounds"),
    "oz": Unit("ounce", "ounces"),
    "ml": Unit("milliliter", "milliliters"),
    "ha": Unit("hectare", "hectares"),
    "kWh": Unit("kilowatt hour", "kilowatt hours"),
    "MWh": Unit("megawatt hour", "megawatt hours"),
    "GWh": Unit("gigawatt hour", "gigawatt hours"),
    "TWh": Unit("terawatt hour", "terawatt hours"),
    "kW": Unit("kilowatt", "kilowatts"),
    "MW": Unit("megawatt", "megawatts"),
    "GW": Unit("gigawatt", "gigawatts"),
    "GB": Unit("gigabyte", "gigabytes"),
    "MB": Unit("megabyte", "megabytes"),
    "TB": Unit("terabyte", "terabytes"),
    "hrs": Unit("hour", "hours"),
    "hr": Unit("hour", "hours"),
    "mins": Unit("minute", "minutes"),
    "min": Unit("minute", "minutes"),
    "yrs": Unit("year", "years"),
}
_MINUS = r"(?P<minus>(?<![\w.,)\]])-)?"
_MEASURE_RE = re.compile(
    rf"{_MINUS}(?P<amount>{_NUMBER})(?:\s?[-–]\s?(?P<amount2>{_NUMBER}))?"
    rf"\s?(?P<unit>{_alternation(_UNITS)})(?!{_LETTER})(?P<stop>\.(?!\d))?"
)


def _say_amount(amount: str, scale: str | None, currency: Currency) -> str:
    if scale:
        return f"{say_cardinal(amount)} {scale} {currency.plural}"
    integer, _, fraction = amount.replace(",", "").partition(".")
    if fraction and (len(fraction) != 2 or currency.minor_plural is None):
        return f"{say_cardinal(amount)} {currency.plural}"
    major, minor = int(integer or "0"), int(fraction or "0")
    parts = []
    if major or not minor:
        major_unit = currency.singular if major == 1 else currency.plural
        parts.append(f"{say_cardinal(integer or '0')} {major_unit}")
    if minor:
        minor_unit = currency.minor_singular if minor == 1 else currency.minor_plural
        parts.append(f"{say_cardinal(str(minor))} {minor_unit}")
    return " and ".join(parts)


def _has_cents(amount: str) -> bool:
    fraction = amount.partition(".")[2]
    return len(fraction) == 2 and int(fraction) != 0


def _say_money(match: re.Match[str]) -> str:
    currency = _CURRENCIES[match.group("currency")]
    amount, amount2 = match.group("amount"), match.group("amount2")
    scale, scale2 = (
        _SCALES[group.strip().lower()] if group else None
        for group in (match.group("scale"), match.group("scale2"))
    )
    if amount2 is None:
        return _say_amount(amount, scale, currency)
    if _has_cents(amount) or _has_cents(amount2):
        first = _say_amount(amount, scale, currency)
        return f"{first} to {_say_amount(amount2, scale2, currency)}"
    # "$5-10 million" -> "five to ten million dollars": one unit for the whole range.
    first = say_cardinal(amount) + (f" {scale}" if scale and scale != scale2 else "")
    second = say_cardinal(amount2) + (f" {scale2}" if scale2 else "")
    return f"{first} to {second} {currency.plural}"


def _say_bare_scale(match: re.Match[str]) -> str:
    return f"{say_cardinal(match.group('amount'))} {_SCALES[match.group('scale').lower()]}"


def _say_bare_millions(match: re.Match[str]) -> str:
    return f"{say_cardinal(match.group('amount'))} million"


def _say_measure(match: re.Match[str]) -> str:
    unit = _UNITS[match.group("unit")]
    amount, amount2 = match.group("amount"), match.group("amount2")
    spoken = ("minus " if match.group("minus") else "") + say_cardinal(amount)
    if amount2 is not None:
        spoken += f" to {say_cardinal(amount2)} {unit.plural}"
    else:
        spoken += f" {unit.singular if amount == '1' else unit.plural}"
    # A full stop after a symbol ("45%.") ends the sentence; after a letter unit ("5 ft. tall")
    # it may only mark the abbreviation.
    if match.group("stop") and (
        not match.group("unit")[-1].isalpha()
        or _full_stop_ends_sentence(match.string, match.end(), any_capital=True)
    ):
        spoken += "."
    return spoken


# ---------------------------------------------------------------------------------------------
# Remaining numbers
# ---------------------------------------------------------------------------------------------

_ORDINAL_RE = re.compile(rf"(?<![\d.,])(?P<number>{_INTEGER})(?:st|nd|rd|th)\b")
_PLURAL_NUMBER_RE = re.compile(r"'?\b(?P<number>\d+)(?P<suffix>'s|s)\b")
_DECADE_CONTEXT_RE = re.compile(r"\b(?:the|early|mid|late)[\s-]$", re.IGNORECASE)
_SLASHED_NUMBERS_RE = re.compile(r"(?<![\d/.,])(?P<top>\d+)/(?P<bottom>\d+)(?![\d/]|\.\d)")
_LETTER_DIGIT_BOUNDARY_RE = re.compile(rf"(?<={_LETTER})-?(?=\d)|(?<=\d)(?={_LETTER})")
_DIGIT_GROUPS_RE = re.compile(r"(?<![\d.,-])\d+(?:-\d+){2,}(?![\d-])")
_NUMBER_RANGE_RE = re.compile(
    rf"(?<![\d.,])(?P<first>{_NUMBER})(?:-|–|\s[-–]\s)(?P<second>{_NUMBER})(?![\d-])"
)
_RATIO_RE = re.compile(r"(?<![\d:.,])(?P<first>\d+):(?P<second>\d+)(?![\d:])")
_NUMBER_RE = re.compile(rf"{_MINUS}(?P<number>\d+(?:\.\d+){{2,}}|{_NUMBER})")
_FRACTION_WORDS = {2: ("half", "halves"), 4: ("quarter", "quarters")}


def _say_ordinal(match: re.Match[str]) -> str:
    return say_ordinal(match.group("number"))


def _say_plural_number_match(match: re.Match[str]) -> str:
    number = match.group("number")
    if match.group("suffix") == "'s":
        # "the 1990's" is a decade; "2020's budget" is a possessive, read in a later pass.
        is_decade = number.endswith("0") and _DECADE_CONTEXT_RE.search(
            match.string[max(0, match.start() - 6) : match.start()]
        )
        if not is_decade:
            return match.group(0)
    return _say_plural_number(number)


def _say_slashed_numbers(match: re.Match[str]) -> str:
    top, bottom = int(match.group("top")), int(match.group("bottom"))
    if 1 <= top < bottom <= 10:
        # A simple fraction: "1/2" -> "one half", "3/4" -> "three quarters".
        singular, plural = _FRACTION_WORDS.get(
            bottom, (say_ordinal(str(bottom)), say_ordinal(str(bottom)) + "s")
        )
        return f"{say_cardinal(str(top))} {singular if top == 1 else plural}"
    # "24/7", "9/11", "2019/20": read the numbers one after the other.
    return f"{say_number(match.group('top'))} {say_number(match.group('bottom'))}"


def _say_digit_groups(match: re.Match[str]) -> str:
    """Phone and reference numbers ("555-123-4567") are read digit by digit, group by group."""
    return ", ".join(_say_digits(group) for group in match.group(0).split("-"))


def _say_number_range(match: re.Match[str]) -> str:
    return f"{say_number(match.group('first'))} to {say_number(match.group('second'))}"


def _say_number_match(match: re.Match[str]) -> str:
    number = match.group("number")
    minus = "minus " if match.group("minus") else ""
    if number.count(".") > 1:
        # Version numbers: "17.2.1" -> "seventeen point two point one".
        return minus + " point ".join(say_cardinal(part) for part in number.split("."))
    if minus:
        return minus + say_cardinal(number)
    return say_number(number)


# ---------------------------------------------------------------------------------------------
# Symbols and punctuation
# ---------------------------------------------------------------------------------------------

_SPOKEN_SYMBOLS = {
    "&": " and ",
    "+": " plus ",
    "=": " equals ",
    "@": " at ",
    "%": " percent ",
    "°": " degrees ",
    "±": " plus or minus ",
    "×": " times ",
    "~": " about ",
    "≈": " about ",
    "<": " less than ",
    ">": " more than ",
    "§": " section ",
}
_SPOKEN_SYMBOL_RE = re.compile("|".join(re.escape(symbol) for symbol in _SPOKEN_SYMBOLS))
_AND_OR_RE = re.compile(r"\band/or\b")
_WORD_SLASH_WORD_RE = re.compile(r"(?<=[a-z])/(?=[a-z])")
# Dashes used as punctuation become a comma: the synthesiser pauses there as for a comma.
_DASH_RE = re.compile(r"\s*(?:--+|[–—])\s*|\s+-\s+|^-\s+")
_OPENING_BRACKET_RE = re.compile(r"\s*[(\[{]\s*")
_CLOSING_BRACKET_RE = re.compile(r"\s*[)\]}]")
_KEPT_PUNCTUATION = frozenset(".,;:?!'\"- ")
_LOOSE_HYPHEN_RE = re.compile(rf"(?<!{_LETTER})-|-(?!{_LETTER})")
# A stop left standing on its own after another ("Done. 🎉!" -> "Done. !") is dropped.
_STRAY_STOP_RE = re.compile(r"(?<=[.?!])(?:\s+[.?!]+)+(?=\s|$)")
_SPACE_BEFORE_PUNCTUATION_RE = re.compile(r"\s+([.,;:?!])")
_REPEATED_PAUSES_RE = re.compile(r"([,;:])(?:\s*[,;:])+")
_PAUSE_BEFORE_STOP_RE = re.compile(r"[,;:]\s*([.?!])")
_PAUSE_AFTER_STOP_RE = re.compile(r"([.?!])\s*[,;:]")
_LEADING_PUNCTUATION_RE = re.compile(r"^[\s.,;:?!]+")
_TRAILING_PAUSE_RE = re.compile(r"[\s,;:]+$")
_MISSING_SPACE_AFTER_PAUSE_RE = re.compile(rf"([,;:])(?={_LETTER})")


@functools.lru_cache(maxsize=1024)
def _is_kept_character(character: str) -> bool:
    return character in _KEPT_PUNCTUATION or unicodedata.category(character)[0] in "LM"


def _tidy_punctuation(text: str) -> str:
    text = _AND_OR_RE.sub("and or", text)
    text = _WORD_SLASH_WORD_RE.sub(" or ", text)
    text = _SPOKEN_SYMBOL_RE.sub(lambda m: _SPOKEN_SYMBOLS[m.group(0)], text)
    text = _DASH_RE.sub(", ", text)
    text = _OPENING_BRACKET_RE.sub(", ", text)
    text = _CLOSING_BRACKET_RE.sub(", ", text)
    # Whatever is left that is neither a letter nor prosodic punctuation cannot be spoken.
    text = "".join(c if _is_kept_character(c) else " " for c in text)
    text = _LOOSE_HYPHEN_RE.sub(" ", text)  # a hyphen only survives inside a compound word
    text = " ".join(text.split())
    text = _STRAY_STOP_RE.sub("", text)
    text = _SPACE_BEFORE_PUNCTUATION_RE.sub(r"\1", text)
    text = _REPEATED_PAUSES_RE.sub(r"\1", text)
    text = _PAUSE_BEFORE_STOP_RE.sub(r"\1", text)
    text = _PAUSE_AFTER_STOP_RE.sub(r"\1", text)
    text = _MISSING_SPACE_AFTER_PAUSE_RE.sub(r"\1 ", text)
    text = _LEADING_PUNCTUATION_RE.sub("", text)
    return _TRAILING_PAUSE_RE.sub("", text)


# ---------------------------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------------------------

# Applied in order: the specific forms first, so that the generic number rules at the end only
# see plain numbers. Every rule removes the digits it reads. Dates and times come before the
# abbreviations so that "9 a.m." is read as a time, not as a sentence end.
_DATE_AND_TIME_RULES: list[tuple[re.Pattern[str], Replacement]] = [
    (_ISO_DATE_RE, _say_iso_date),
    (_CLOCK_TIME_RE, _say_clock_time),
    (_DOTTED_CLOCK_TIME_RE, _say_clock_time),
    (_HOUR_AMPM_RE, _say_hour_ampm),
]
_NUMBER_RULES: list[tuple[re.Pattern[str], Replacement]] = [
    (_MONEY_RE, _say_money),
    (_BARE_SCALE_RE, _say_bare_scale),
    (_BARE_MILLIONS_RE, _say_bare_millions),
    (_MEASURE_RE, _say_measure),
    (_MONTH_DAY_RE, _say_month_day),
    (_DAY_MONTH_RE, _say_day_month),
    (_ORDINAL_RE, _say_ordinal),
    (_PLURAL_NUMBER_RE, _say_plural_number_match),
    (_SLASHED_NUMBERS_RE, _say_slashed_numbers),
]
_PLAIN_NUMBER_RULES: list[tuple[re.Pattern[str], Replacement]] = [
    (_DIGIT_GROUPS_RE, _say_digit_groups),
    (_NUMBER_RANGE_RE, _say_number_range),
    (_RATIO_RE, _say_number_range),  # scores and ratios: "3:2" -> "three to two"
    (_NUMBER_RE, _say_number_match),
]
_PARAGRAPH_BREAK_RE = re.compile(r"\n[^\S\n]*\n\s*")


def _normalise_paragraph(paragraph: str) -> str:
    text = _clean_unicode(paragraph)
    for pattern, replace in _DATE_AND_TIME_RULES:
        text = _substitute(pattern, replace, text)
    text = _expand_abbreviations(text)
    for pattern, replace in _NUMBER_RULES:
        text = _substitute(pattern, replace, text)
    # "5G" -> "5 G", "COVID-19" -> "COVID 19": a number inside a word is read on its own.
    text = _LETTER_DIGIT_BOUNDARY_RE.sub(" ", text)
    for pattern, replace in _PLAIN_NUMBER_RULES:
        text = _substitute(pattern, replace, text)
    return _tidy_punctuation(text)


def _paragraphs(text: str) -> list[str]:
    return _PARAGRAPH_BREAK_RE.split(text.replace("\r\n", "\n").replace("\r", "\n"))


def normalise(text: str) -> str:
    """Spell out a story text as speakable English words.

    Paragraphs (separated by a blank line) stay separated by one blank line; a paragraph with
    nothing speakable is dropped. Within a paragraph, whitespace becomes single spaces.
    """
    paragraphs = (_normalise_paragraph(paragraph) for paragraph in _paragraphs(text))
    return "\n\n".join(paragraph for paragraph in paragraphs if paragraph)


# ---------------------------------------------------------------------------------------------
# Sentences
# ---------------------------------------------------------------------------------------------

# A sentence ends at ".", "!", "?" or "..." (with any closing quotes or brackets) before the
# capitalised first word of the next. Abbreviations are expanded by then, so a full stop before
# a capital is a sentence end.
_SENTENCE_END_RE = re.compile(
    rf"(?P<end>[.!?]+[\"')\]]*)(?P<space>\s+)[\"'(\[]*(?P<next>{_LETTER})"
)
_CLAUSE_BREAKS = (re.compile(r"[;]\s+"), re.compile(r"[,:]\s+"), re.compile(r"\s+"))


def _word_count(text: str) -> int:
    return len(WORD_RE.findall(text))


def _fits(sentence: str) -> bool:
    return len(sentence) <= MAX_SENTENCE_CHARS and _word_count(sentence) <= MAX_SENTENCE_WORDS


def _split_long_sentence(sentence: str) -> list[str]:
    """Split a sentence that is too long for the synthesiser into parts that fit.

    Each cut is made at the clause break nearest the middle, preferring ";" to "," and ":",
    and those to a plain space, so the parts are balanced and end where a reader would pause.
    """
    if _fits(sentence):
        return [sentence]
    middle = len(sentence) / 2
    for clause_break in _CLAUSE_BREAKS:
        cuts = [
            (match.start(), match.end())
            for match in clause_break.finditer(sentence)
            if _word_count(sentence[: match.start()]) >= MIN_CLAUSE_WORDS
            and _word_count(sentence[match.end() :]) >= MIN_CLAUSE_WORDS
        ]
        if cuts:
            # The break characters (";", ",") stay with the left part; the space goes.
            _, end = min(cuts, key=lambda cut: abs(cut[0] - middle))
            left = sentence[:end].rstrip()
            return _split_long_sentence(left) + _split_long_sentence(sentence[end:])
    return [sentence]


def split_sentences(paragraph: str) -> list[str]:
    """Split one normalised paragraph into sentences.

    Joined with single spaces, the sentences give back the paragraph with its whitespace
    collapsed. Sentences longer than MAX_SENTENCE_CHARS or MAX_SENTENCE_WORDS are split further
    at clause breaks.
    """
    text = " ".join(paragraph.split())
    sentences: list[str] = []
    start = 0
    for match in _SENTENCE_END_RE.finditer(text):
        if not match.group("next").isupper():
            continue
        sentences.append(text[start : match.end("end")])
        start = match.end("space")
    sentences.append(text[start:])
    return [part for sentence in sentences if sentence for part in _split_long_sentence(sentence)]


# ---------------------------------------------------------------------------------------------
# Transcript
# ---------------------------------------------------------------------------------------------


def _is_english(language: str) -> bool:
    return re.fullmatch(r"en(?:[-_][A-Za-z]+)*", language) is not None


def build_transcript(story: dict[str, Any]) -> dict[str, Any]:
    """The transcript.json structure (docs/formats.md) for a validated story dict."""
    story_id = story["id"]
    language = story.get("language", "en")
    if not _is_english(language):
        raise ValueError(
            f"story '{story_id}': language '{language}' is not supported; "
            "the text can only be read in English"
        )

    text_parts: list[str] = []
    sentences: list[dict[str, Any]] = []
    offset = 0
    paragraph_index = 0
    for paragraph in _paragraphs(story["text"]):
        # Sentences without a single word (a lone "!" left by removed emoji) have nothing for
        # the synthesiser or the aligner to read.
        spoken = [s for s in split_sentences(_normalise_paragraph(paragraph)) if WORD_RE.search(s)]
        if not spoken:
            continue
        if text_parts:
            text_parts.append("\n\n")
            offset += 2
        for position, sentence in enumerate(spoken):
            if position:
                text_parts.append(" ")
                offset += 1
            words = [
                {
                    "word": m.group(0),
                    "start_offset": offset + m.start(),
                    "end_offset": offset + m.end(),
                }
                for m in WORD_RE.finditer(sentence)
            ]
            sentences.append(
                {
                    "index": len(sentences),
                    "paragraph": paragraph_index,
                    "text": sentence,
                    "start_offset": offset,
                    "end_offset": offset + len(sentence),
                    "words": words,
                }
            )
            text_parts.append(sentence)
            offset += len(sentence)
        paragraph_index += 1

    if not sentences:
        raise ValueError(f"story '{story_id}': text has no words to read after normalisation")
    return {
        "story": story_id,
        "language": language,
        "text": "".join(text_parts),
        "sentences": sentences,
    }
