"""Forced alignment by a gentle server (https://github.com/lowerquality/gentle).

gentle answers ``POST /transcriptions?async=false`` (multipart form: ``audio``, ``transcript``)
with the alignment as JSON once it is done. Its words carry ``startOffset``/``endOffset`` into
the transcript it was sent, so each transcript word is matched to gentle's word at exactly its
offsets. gentle splits the text into words with its own rule; a transcript word with no gentle
word at exactly its offsets (the two rules disagree on it) is marked not found, and the
``phonemes`` step gives it g2p phones, as for any word the aligner missed.

gentle never answers a synchronous request whose alignment fails (a file it cannot decode, an
error inside the aligner): the request stays open. The read timeout is what ends it.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from storyreel.align import NOT_FOUND, SUCCESS

log = logging.getLogger(__name__)

# gentle also reports words it heard that are not in the transcript; alignment.json has one
# entry per transcript word, so those are left out.
NOT_FOUND_IN_TRANSCRIPT = "not-found-in-transcript"
ANSWER_EXCERPT_CHARS = 300


class GentleError(RuntimeError):
    """The gentle server could not be reached, refused the request or answered nonsense."""


@dataclass(frozen=True)
class GentleSettings:
    """``align.gentle`` in config.yaml."""

    url: str = "http://gentle.storyreel.svc:8765"
    connect_timeout_s: float = 10.0
    timeout_s: float = 600.0  # for the whole alignment: gentle answers only once it is done
    retries: int = 3
    backoff_s: float = 2.0  # first pause between tries; doubled after each

    @classmethod
    def from_config(cls, section: dict | None) -> GentleSettings:
        known = cls.__dataclass_fields__
        unknown = sorted(set(section or {}) - set(known))
        if unknown:
            raise ValueError(f"align.gentle: unknown setting(s) {', '.join(unknown)}")
        return cls(**(section or {}))


def align(wav_path: str | os.PathLike, transcript: dict, settings: GentleSettings) -> dict:
    """Align ``speech.wav`` to ``transcript.json`` on a gentle server; the ``alignment.json`` dict.

    Every transcript word gets one entry, in order, as the embedded aligner writes them.
    """
    started = time.perf_counter()
    answer = request_alignment(settings, open_wav(wav_path), transcript["text"])
    result = alignment_from_gentle(answer, transcript, settings.url)
    log.info(
        "gentle at %s aligned %d/%d words in %.2f s",
        settings.url,
        sum(word["case"] == SUCCESS for word in result["words"]),
        len(result["words"]),
        time.perf_counter() - started,
    )
    return result


def open_wav(wav_path: str | os.PathLike) -> bytes:
    """The wav's bytes, read once: every try sends the same bytes."""
    return Path(wav_path).read_bytes()


def request_alignment(settings: GentleSettings, wav: bytes, text: str) -> dict:
    """gentle's JSON answer for one alignment, after retries; raises GentleError."""
    endpoint = settings.url.rstrip("/") + "/transcriptions"
    tries = settings.retries + 1
    with requests.Session() as session:
        for attempt in range(1, tries + 1):
            try:
                response = session.post(
                    endpoint,
                    params={"async": "false"},
                    files={"audio": ("speech.wav", wav, "audio/wav")},
                    data={"transcript": text},
                    timeout=(settings.connect_timeout_s, settings.timeout_s),
                )
            except requests.exceptions.ReadTimeout as error:
                # Not retried: the server took the request and is still working on it (or
                # stuck); another try would wait as long again.
                raise GentleError(
                    f"gentle server at {settings.url} gave no answer within "
                    f"{settings.timeout_s:g} s (align.gentle.timeout_s); it may be overloaded, "
                    f"or unable to decode the audio: {error}"
                ) from error
            except requests.exceptions.ConnectionError as error:
                if attempt == tries:
                    raise GentleError(
                        f"gentle server at {settings.url} not reachable after {tries} "
                        f"tries: {error}; start it or set align.backend: pocketsphinx"
                    ) from error
                log.warning("gentle server at %s not reachable (%s), retrying", settings.url, error)
            else:
                if response.status_code < 500:
                    return _json_answer(response, settings.url)
                if attempt == tries:
                    raise GentleError(
                        f"gentle server at {settings.url} answered HTTP {response.status_code} "
                        f"to all {tries} tries: {_excerpt(response.text)}"
                    )
                log.warning(
                    "gentle server at %s answered HTTP %d, retrying",
                    settings.url,
                    response.status_code,
                )
            time.sleep(settings.backoff_s * 2 ** (attempt - 1))
    raise AssertionError("unreachable")  # the loop returns or raises


def _json_answer(response: requests.Response, url: str) -> dict:
    if response.status_code >= 400:
        raise GentleError(
            f"gentle server at {url} refused the request: HTTP {response.status_code}: "
            f"{_excerpt(response.text)}"
        )
    try:
        answer = response.json()
    except ValueError as error:
        raise GentleError(
            f"gentle server at {url} answered something other than JSON "
            f"(HTTP {response.status_code}, Content-Type "
            f"{response.headers.get('Content-Type')!r}): {_excerpt(response.text)}"
        ) from error
    if not isinstance(answer, dict):
        raise GentleError(f"gentle server at {url} answered JSON that is not an object")
    return answer


def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    if len(text) > ANSWER_EXCERPT_CHARS:
        return repr(text[:ANSWER_EXCERPT_CHARS] + "...")
    return repr(text)


def alignment_from_gentle(answer: dict, transcript: dict, url: str = "gentle") -> dict:
    """``alignment.json`` from gentle's answer: one entry per transcript word, in order.

    Raises GentleError when the answer is not shaped like gentle's alignment of this text.
    """
    text = transcript["text"]
    by_offsets = {
        (entry["startOffset"], entry["endOffset"]): entry
        for entry in _checked_words(answer, text, url)
        if entry["case"] != NOT_FOUND_IN_TRANSCRIPT
    }
    words = []
    for sentence in transcript["sentences"]:
        for word in sentence["words"]:
            entry = by_offsets.get((word["start_offset"], word["end_offset"]))
            words.append(_alignment_word(word, entry))
    return {"transcript": text, "words": words}


def _alignment_word(word: dict, entry: dict | None) -> dict:
    if entry is None or entry["case"] != SUCCESS:
        return {
            "case": NOT_FOUND,
            "word": word["word"],
            "startOffset": word["start_offset"],
            "endOffset": word["end_offset"],
        }
    return {
        "case": SUCCESS,
        "word": word["word"],
        "alignedWord": entry["alignedWord"],
        "start": round(float(entry["start"]), 3),
        "end": round(float(entry["end"]), 3),
        "startOffset": word["start_offset"],
        "endOffset": word["end_offset"],
        "phones": [
            {"phone": phone["phone"], "duration": round(float(phone["duration"]), 3)}
            for phone in entry["phones"]
        ],
    }


def _checked_words(answer: dict, text: str, url: str) -> list[dict]:
    """gentle's word entries, each checked against gentle's format and the text sent."""

    def fail(where: str, problem: str) -> GentleError:
        return GentleError(
            f"gentle server at {url} answered an unusable alignment: {where}: {problem}"
        )

    if "transcript" in answer and answer["transcript"] != text:
        raise fail("transcript", "it is not the text that was sent")
    words = answer.get("words")
    if words is None:
        if any(character.isalnum() for character in text):
            raise fail("words", "missing")
        return []
    if not isinstance(words, list):
        raise fail("words", "not a list")
    for index, entry in enumerate(words):
        where = f"words[{index}]"
        if not isinstance(entry, dict):
            raise fail(where, "not an object")
        case = entry.get("case")
        if case not in (SUCCESS, NOT_FOUND, NOT_FOUND_IN_TRANSCRIPT):
            raise fail(where, f"unknown case {case!r}")
        if case == NOT_FOUND_IN_TRANSCRIPT:
            continue
        start, end = entry.get("startOffset"), entry.get("endOffset")
        if not (_is_int(start) and _is_int(end) and 0 <= start < end <= len(text)):
            raise fail(where, f"offsets {start!r}-{end!r} are not a span of the text")
        if entry.get("word") != text[start:end]:
            raise fail(
                where,
                f"word {entry.get('word')!r} is not the text at its offsets {text[start:end]!r}",
            )
        if case == SUCCESS:
            _check_success(entry, where, fail)
    return words


def _check_success(entry: dict, where: str, fail) -> None:
    if not isinstance(entry.get("alignedWord"), str):
        raise fail(where, "alignedWord missing")
    start, end = entry.get("start"), entry.get("end")
    if not (_is_number(start) and _is_number(end) and 0 <= start <= end):
        raise fail(where, f"times {start!r}-{end!r} are not a time span")
    phones = entry.get("phones")
    if not isinstance(phones, list):
        raise fail(where, "phones missing")
    for position, phone in enumerate(phones):
        if not (
            isinstance(phone, dict)
            and isinstance(phone.get("phone"), str)
            and _is_number(phone.get("duration"))
            and phone["duration"] >= 0
        ):
            raise fail(f"{where}.phones[{position}]", f"not a phone with a duration: {phone!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
