"""Tests for storyreel.textnorm: spoken forms, sentence splitting and transcript.json."""

import random
import re
import time

import pytest

from storyreel.textnorm import (
    MAX_SENTENCE_CHARS,
    MAX_SENTENCE_WORDS,
    WORD_RE,
    build_transcript,
    normalise,
    split_sentences,
)

# (written, spoken). Grouped by what is being spelled out.
NORMALISATION_TABLE = [
    # cardinals, decimals, negatives
    ("He has 1,234 followers.", "He has one thousand two hundred thirty four followers."),
    ("It grew 3.5 times.", "It grew three point five times."),
    ("A rate of 0.25 was set.", "A rate of zero point two five was set."),
    ("Temperatures fell to -7 overnight.", "Temperatures fell to minus seven overnight."),
    ("Some 12 people came.", "Some twelve people came."),
    ("It had 1,000,000,000,000,000,000 atoms.", "It had one quintillion atoms."),
    ("iOS 17.2.1 is out.", "iOS seventeen point two point one is out."),
    ("Web 2.0 arrived.", "Web two point zero arrived."),
    ("Call 555-123-4567 now.", "Call five five five, one two three, four five six seven now."),
    # years and decades
    ("In 1999, prices rose.", "In nineteen ninety nine, prices rose."),
    ("The 2021 election.", "The twenty twenty one election."),
    ("Since 2005 nothing changed.", "Since two thousand five nothing changed."),
    ("In 1066 and 1905.", "In ten sixty six and nineteen oh five."),
    ("In the 1990s we danced.", "In the nineteen nineties we danced."),
    ("Music of the '60s and the 1980's.", "Music of the sixties and the nineteen eighties."),
    (
        "The 2000s and hundreds, 100s of people.",
        "The two thousands and hundreds, hundreds of people.",
    ),
    ("2021 was a good year.", "Twenty twenty one was a good year."),
    # money
    ("It costs $5.", "It costs five dollars."),
    ("It costs $1.", "It costs one dollar."),
    ("A $3.2 million deal.", "A three point two million dollars deal."),
    (
        "She paid $1,250.50 for it.",
        "She paid one thousand two hundred fifty dollars and fifty cents for it.",
    ),
    ("Only $0.99 each.", "Only ninety nine cents each."),
    ("Tickets cost €20.", "Tickets cost twenty euros."),
    ("A £3bn loss.", "A three billion pounds loss."),
    ("It was £1.01 then.", "It was one pound and one penny then."),
    ("It was ¥100.", "It was one hundred yen."),
    ("The $5-10 million fund.", "The five to ten million dollars fund."),
    ("A $5bn-$7bn bill.", "A five to seven billion dollars bill."),
    ("US$5 each.", "Five U S dollars each."),
    ("It rose to 3.2m people.", "It rose to three point two million people."),
    # percentages and units
    ("Turnout was 45%.", "Turnout was forty five percent."),
    ("Up 3.5 percent.", "Up three point five percent."),
    ("Prices rose 10-15% this year.", "Prices rose ten to fifteen percent this year."),
    ("It fell -0.5% today.", "It fell minus zero point five percent today."),
    (
        "It weighs approx. 5 kg and is 1 km away.",
        "It weighs approximately five kilograms and is one kilometer away.",
    ),
    (
        "It's 30°C today and -5°C tomorrow.",
        "It's thirty degrees Celsius today and minus five degrees Celsius tomorrow.",
    ),
    ("Winds of 70 mph.", "Winds of seventy miles per hour."),
    ("He's 6′2″ tall.", "He's six feet two inches tall."),
    ("An area of 5 km².", "An area of five square kilometers."),
    # ordinals and dates
    ("The 1st, 22nd and 3rd place.", "The first, twenty second and third place."),
    ("The 21st century.", "The twenty first century."),
    ("On March 3, 2021 it rained.", "On March third, twenty twenty one it rained."),
    ("On 5 March it rained.", "On the fifth of March it rained."),
    ("By May 1st or the 2nd of June.", "By May first or the second of June."),
    ("Due Jan. 5 and Sept 11.", "Due January fifth and September eleventh."),
    ("Filed on 2021-03-04.", "Filed on March fourth, twenty twenty one."),
    # times
    ("At 9:30 we met.", "At nine thirty we met."),
    ("At 9:30 am we met.", "At nine thirty AM we met."),
    ("It opens at 10:05 p.m. daily.", "It opens at ten oh five PM daily."),
    ("Doors at 9am sharp.", "Doors at nine AM sharp."),
    ("Kick-off at 7.45pm tonight.", "Kick-off at seven forty five PM tonight."),
    ("At 5 p.m. The talks ended.", "At five PM. The talks ended."),
    ("It's 5:00 now.", "It's five o'clock now."),
    # abbreviations and initialisms
    (
        "Mr. Smith and Mrs. Jones met Dr. Brown.",
        "Mister Smith and Missus Jones met Doctor Brown.",
    ),
    (
        "Prof. Xu, Gen. Yates, Sen. Zhou, Rep. Quinn and Gov. Wei.",
        "Professor Xu, General Yates, Senator Zhou, Representative Quinn and Governor Wei.",
    ),
    ("Mr Smith said.", "Mister Smith said."),
    ("St. Louis is on Main St. in town.", "Saint Louis is on Main Street in town."),
    ("He lives at No. 10.", "He lives at number ten."),
    ("Apples vs. oranges.", "Apples versus oranges."),
    ("Apples, pears, etc. The end.", "Apples, pears, et cetera. The end."),
    ("Fruit, e.g. apples, i.e. food.", "Fruit, for example apples, that is food."),
    ("The U.S. economy grew.", "The U S economy grew."),
    ("He lives in the U.S. The talks ended.", "He lives in the U S. The talks ended."),
    ("John F. Kennedy spoke.", "John F Kennedy spoke."),
    ("Martin Luther King Jr. Day.", "Martin Luther King Junior Day."),
    ("Elizabeth II and Louis XIV.", "Elizabeth the second and Louis the fourteenth."),
    ("World War II ended.", "World War Two ended."),
    ("The #1 hit.", "The number one hit."),
    # ranges and other numbers inside words
    ("From 2019-2021 it fell.", "From twenty nineteen to twenty twenty one it fell."),
    ("The score was 3-2.", "The score was three to two."),
    ("The ratio is 3:2.", "The ratio is three to two."),
    ("COVID-19 hit 5G masts.", "COVID nineteen hit five G masts."),
    ("A 5-year-old boy.", "A five-year-old boy."),
    ("Open 24/7 and 3/4 done.", "Open twenty four seven and three quarters done."),
    ("Add 2½ cups.", "Add two and a half cups."),
    # symbols
    ("Tom & Jerry.", "Tom and Jerry."),
    ("AT&T and R&D.", "AT and T and R and D."),
    ("Trade and/or his/her vote.", "Trade and or his or her vote."),
    # unicode, quotes, dashes, emoji, apostrophes
    ("“Hello,” she said — “it’s fine…”", '"Hello," she said, "it\'s fine..."'),
    ("Great news 🎉🎉 today!", "Great news today!"),
    ("Thumbs 👍🏽 up.", "Thumbs up."),
    ("The newsroom's editors don't agree.", "The newsroom's editors don't agree."),
    ("No\u00a0break\u200bhere.", "No breakhere."),
    ("Version 2 (beta) - out now.", "Version two, beta, out now."),
    ("Ｔｅｓｔ １２ ﬁne.", "Test twelve fine."),
]


@pytest.mark.parametrize(("written", "spoken"), NORMALISATION_TABLE)
def test_normalise_table(written: str, spoken: str) -> None:
    assert normalise(written) == spoken


def test_table_covers_enough_cases() -> None:
    assert len(NORMALISATION_TABLE) >= 40


@pytest.mark.parametrize(("written", "spoken"), NORMALISATION_TABLE)
def test_normalised_text_has_no_digits_and_no_hyphenated_numbers(written: str, spoken: str) -> None:
    result = normalise(written)
    assert not re.search(r"\d", result)
    assert not re.search(r"(twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety)-", result)


def test_normalise_keeps_paragraph_breaks_and_drops_empty_paragraphs() -> None:
    text = "First  paragraph\nstill first.\n\n🎉🎉\n\n  \n\nSecond, 2 words."
    assert normalise(text) == "First paragraph still first.\n\nSecond, two words."


def test_normalise_accepts_windows_line_endings() -> None:
    assert normalise("One\r\ntwo.\r\n\r\nThree.") == "One two.\n\nThree."


def test_normalise_drops_symbols_that_cannot_be_spoken() -> None:
    assert normalise("★ Breaking ✓ news ™ © ® ☎") == "Breaking news"


def test_normalise_keeps_sentence_punctuation() -> None:
    assert normalise("Really?! Yes; no: maybe... Fine.") == "Really?! Yes; no: maybe... Fine."


def test_normalise_is_fast_on_a_long_story() -> None:
    sentence = (
        "On March 3, 2021, Mr. Smith paid $1,250.50 — about 45% of the 2019-2021 budget — "
        "for 3.5 kg of coffee 🎉 in the U.S. "
    )
    story = ((sentence * 8) + "\n\n") * 25
    assert len(story) >= 20_000
    started = time.perf_counter()
    result = normalise(story)
    assert time.perf_counter() - started < 1.0
    assert not re.search(r"\d", result)


# -------------------------------------------------------------------------------------------
# split_sentences
# -------------------------------------------------------------------------------------------

SPLIT_TABLE = [
    ("One. Two. Three.", ["One.", "Two.", "Three."]),
    ('He said "no." Then he left.', ['He said "no."', "Then he left."]),
    ('"Is it?" she asked. "Yes!" He ran.', ['"Is it?" she asked.', '"Yes!"', "He ran."]),
    ("Why? Because! Wait... What?!", ["Why?", "Because!", "Wait...", "What?!"]),
    ("It rose, a lot. Then it fell.", ["It rose, a lot.", "Then it fell."]),
    ("Ends without a stop", ["Ends without a stop"]),
    ("He paused... and went on.", ["He paused... and went on."]),
    ("Lower case. after a stop stays.", ["Lower case. after a stop stays."]),
    ("  Spaces   collapse.  Here.  ", ["Spaces collapse.", "Here."]),
]


@pytest.mark.parametrize(("paragraph", "sentences"), SPLIT_TABLE)
def test_split_sentences(paragraph: str, sentences: list[str]) -> None:
    assert split_sentences(paragraph) == sentences


def test_split_sentences_does_not_split_expanded_abbreviations() -> None:
    paragraph = normalise("Dr. Smith met Mr. Jones at St. Paul's at 9 a.m. on Jan. 5, etc.")
    assert split_sentences(paragraph) == [
        "Doctor Smith met Mister Jones at Saint Paul's at nine AM on January fifth, et cetera."
    ]


def test_long_sentence_is_split_at_clause_breaks() -> None:
    sentence = (
        "The council, which met on Tuesday evening in the old town hall, voted to approve the "
        "budget; the mayor, who had opposed several of the cuts, said she would nevertheless "
        "sign it, adding that the city had no choice given the state of its finances, the "
        "rising cost of energy and the demands of the unions, who have threatened to strike "
        "if wages are not raised before the end of the year."
    )
    parts = split_sentences(sentence)
    assert parts == [
        "The council, which met on Tuesday evening in the old town hall, voted to approve the "
        "budget;",
        "the mayor, who had opposed several of the cuts, said she would nevertheless sign it, "
        "adding that the city had no choice given the state of its finances,",
        "the rising cost of energy and the demands of the unions, who have threatened to strike "
        "if wages are not raised before the end of the year.",
    ]
    assert " ".join(parts) == sentence


def test_long_sentence_without_commas_is_split_into_balanced_parts() -> None:
    sentence = " ".join(["word"] * 130) + "."
    parts = split_sentences(sentence)
    assert [len(part.split()) for part in parts] == [33, 32, 33, 32]
    assert " ".join(parts) == sentence
    for part in parts:
        assert len(part) <= MAX_SENTENCE_CHARS
        assert len(WORD_RE.findall(part)) <= MAX_SENTENCE_WORDS


def test_long_sentence_split_respects_character_limit() -> None:
    sentence = ", ".join(["extraordinarily"] * 40) + "."
    parts = split_sentences(sentence)
    assert len(parts) > 1
    assert all(len(part) <= MAX_SENTENCE_CHARS for part in parts)
    assert " ".join(parts) == sentence


# -------------------------------------------------------------------------------------------
# build_transcript
# -------------------------------------------------------------------------------------------


def _story(text: str, story_id: str = "demo", **fields) -> dict:
    return {"id": story_id, "title": "A title", "language": "en", "text": text, **fields}


def _assert_consistent(transcript: dict) -> None:
    """Offsets, order and paragraph numbering agree with the transcript text."""
    text = transcript["text"]
    previous_end = -1
    previous_paragraph = 0
    for index, sentence in enumerate(transcript["sentences"]):
        assert sentence["index"] == index
        start, end = sentence["start_offset"], sentence["end_offset"]
        assert text[start:end] == sentence["text"]
        assert start > previous_end
        assert sentence["paragraph"] in (previous_paragraph, previous_paragraph + 1)
        separator = text[previous_end:start] if index else ""
        expected_separator = "\n\n" if sentence["paragraph"] != previous_paragraph else " "
        if index:
            assert separator == expected_separator
        assert sentence["words"], "every sentence has words to read"
        assert [w["word"] for w in sentence["words"]] == WORD_RE.findall(sentence["text"])
        for word in sentence["words"]:
            assert text[word["start_offset"] : word["end_offset"]] == word["word"]
            assert start <= word["start_offset"] < word["end_offset"] <= end
        previous_end, previous_paragraph = end, sentence["paragraph"]
    assert previous_end == len(text)
    all_words = [w["word"] for s in transcript["sentences"] for w in s["words"]]
    assert all_words == WORD_RE.findall(text)


def test_build_transcript_structure() -> None:
    transcript = build_transcript(_story("Sentence one. Sentence two.\n\nNext paragraph."))
    assert transcript == {
        "story": "demo",
        "language": "en",
        "text": "Sentence one. Sentence two.\n\nNext paragraph.",
        "sentences": [
            {
                "index": 0,
                "paragraph": 0,
                "text": "Sentence one.",
                "start_offset": 0,
                "end_offset": 13,
                "words": [
                    {"word": "Sentence", "start_offset": 0, "end_offset": 8},
                    {"word": "one", "start_offset": 9, "end_offset": 12},
                ],
            },
            {
                "index": 1,
                "paragraph": 0,
                "text": "Sentence two.",
                "start_offset": 14,
                "end_offset": 27,
                "words": [
                    {"word": "Sentence", "start_offset": 14, "end_offset": 22},
                    {"word": "two", "start_offset": 23, "end_offset": 26},
                ],
            },
            {
                "index": 2,
                "paragraph": 1,
                "text": "Next paragraph.",
                "start_offset": 29,
                "end_offset": 44,
                "words": [
                    {"word": "Next", "start_offset": 29, "end_offset": 33},
                    {"word": "paragraph", "start_offset": 34, "end_offset": 43},
                ],
            },
        ],
    }


def test_build_transcript_offsets_with_unicode_quotes_dashes_and_emoji() -> None:
    text = (
        "“It’s done,” Mr. O’Neill said — at 9:30 a.m. — after the newsroom’s 2nd vote 🎉.\n"
        "Turnout was 45%.\n\n"
        "🎉🎉🎉\n\n"
        "Café owners in Zürich paid €1,250.50… The U.S. didn’t. Why? Because! 👍🏽"
    )
    transcript = build_transcript(_story(text))
    _assert_consistent(transcript)
    assert transcript["text"] == (
        "\"It's done,\" Mister O'Neill said, at nine thirty AM, after the newsroom's second "
        "vote. Turnout was forty five percent.\n\n"
        "Café owners in Zürich paid one thousand two hundred fifty euros and fifty cents... "
        "The U S didn't. Why? Because!"
    )
    assert [s["paragraph"] for s in transcript["sentences"]] == [0, 0, 1, 1, 1, 1]
    words = [w["word"] for s in transcript["sentences"] for w in s["words"]]
    assert words[:6] == ["It's", "done", "Mister", "O'Neill", "said", "at"]
    assert "Café" in words and "Zürich" in words and "didn't" in words


def test_build_transcript_text_matches_normalise() -> None:
    text = "In 1999, Dr. Lee paid $5.\n\nSales rose 3.5% — a record.\n\n\n\nThe end."
    transcript = build_transcript(_story(text))
    _assert_consistent(transcript)
    assert transcript["text"] == normalise(text)


def test_build_transcript_splits_long_sentences() -> None:
    long_sentence = ", ".join(f"item {n}" for n in range(1, 80)) + "."
    transcript = build_transcript(_story("Short one. " + long_sentence))
    _assert_consistent(transcript)
    assert len(transcript["sentences"]) > 2
    for sentence in transcript["sentences"]:
        assert len(sentence["text"]) <= MAX_SENTENCE_CHARS
        assert len(sentence["words"]) <= MAX_SENTENCE_WORDS


def test_normalise_drops_stops_left_behind_by_removed_emoji() -> None:
    assert normalise("Hello there. 🎉! ... Goodbye 🎉.") == "Hello there. Goodbye."


def test_build_transcript_drops_sentences_without_words() -> None:
    transcript = build_transcript(_story("“…” Hello there. Goodbye."))
    _assert_consistent(transcript)
    assert transcript["text"] == "Hello there. Goodbye."
    assert [s["text"] for s in transcript["sentences"]] == ["Hello there.", "Goodbye."]


def test_build_transcript_keeps_language_variant() -> None:
    assert build_transcript(_story("Hi.", language="en-GB"))["language"] == "en-GB"


def test_build_transcript_without_words_raises() -> None:
    with pytest.raises(ValueError) as raised:
        build_transcript(_story("🎉 ★ ... — !", story_id="x"))
    assert str(raised.value) == "story 'x': text has no words to read after normalisation"


def test_build_transcript_empty_text_raises() -> None:
    with pytest.raises(ValueError, match="story 'empty': text has no words to read"):
        build_transcript(_story("\n\n  \n", story_id="empty"))


def test_build_transcript_rejects_other_languages() -> None:
    with pytest.raises(ValueError, match="story 'de-story': language 'de' is not supported"):
        build_transcript(_story("Guten Tag.", story_id="de-story", language="de"))


def test_mixed_up_text_never_leaves_digits_or_breaks_offsets() -> None:
    """Random mixes of the tricky pieces: no digits survive and every transcript is consistent."""
    pieces = [
        "1", "0", "1,234", "3.5", ".5", "2021", "1990s", "9:30", "2019-2021", "-", "–", "—",
        "$", "€", "£", "%", "°C", "km", "st", "'s", "'", '"', "“", "’", ":", "/", ".", ",",
        "!", "?", "…", " ", " ", "\n\n", "a.m.", "Mr.", "St.", "U.S.", "No.", "etc.", "the",
        "March", "II", "bn", "(", ")", "&", "#", "🎉", "👍🏽", "\u200b", "½", "²", "٣", "①",
    ]  # fmt: skip
    generator = random.Random(7)
    for _ in range(500):
        text = "".join(generator.choice(pieces) for _ in range(generator.randint(1, 20)))
        assert not re.search(r"\d", normalise(text)), text
        try:
            transcript = build_transcript(_story(text))
        except ValueError as error:
            assert "text has no words to read after normalisation" in str(error)
            continue
        _assert_consistent(transcript)
