"""espeak-ng through its C API (the library and data shipped in the espeakng-loader wheel).

espeak-ng reports, with the audio, an event at each word (its character position in the text)
and, when initialised with phoneme events in IPA, an event at each phoneme (its IPA name) with
the sample where it starts. Those give the words' timings and what was actually spoken.
"""

from __future__ import annotations

import ctypes
import threading
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from storyreel.tts.spoken import SpokenSegment, SpokenSentence

DEFAULT_VOICE = "en-us"
# espeak-ng's default speaking rate (words per minute) is length scale 1; its limits.
DEFAULT_WORDS_PER_MINUTE = 175
MIN_WORDS_PER_MINUTE = 80
MAX_WORDS_PER_MINUTE = 450

# From espeak-ng's speak_lib.h.
AUDIO_OUTPUT_SYNCHRONOUS = 2
INITIALIZE_PHONEME_EVENTS = 0x0001
INITIALIZE_PHONEME_IPA = 0x0002
INITIALIZE_DONT_EXIT = 0x8000
CHARS_UTF8 = 1
POSITION_CHARACTER = 1
PARAMETER_RATE = 1
PHONEMES_IPA = 0x02
EE_OK = 0

# Audio per synth callback. espeak-ng sizes each callback's event list from it; a longer buffer
# leaves room for the events queued before the speech (see _Espeak.set_voice).
BUFFER_MS = 500

EVENT_LIST_TERMINATED = 0
EVENT_WORD = 1
EVENT_END = 5
EVENT_MSG_TERMINATED = 6
EVENT_PHONEME = 7


class _EventId(ctypes.Union):
    _fields_ = [
        ("number", ctypes.c_int),
        ("name", ctypes.c_char_p),
        ("string", ctypes.c_char * 8),  # a phoneme's name, not NUL-terminated at 8 bytes
    ]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),  # 1-based character position in the text
        ("length", ctypes.c_int),  # characters in the word (word events)
        ("audio_position", ctypes.c_int),  # milliseconds
        ("sample", ctypes.c_int),  # samples since the start of this synthesis
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


@dataclass
class _Recording:
    """What the synth callback collects during one espeak_Synth call."""

    audio: list[np.ndarray] = field(default_factory=list)
    events: list[tuple[int, int, int, int, str]] = field(default_factory=list)
    """(type, text position, length, sample, phoneme name) of each event."""


class _Espeak:
    """The process-wide espeak-ng library: it keeps global state, so calls are serialised."""

    def __init__(self) -> None:
        import espeakng_loader

        library = ctypes.CDLL(espeakng_loader.get_library_path())
        library.espeak_Initialize.argtypes = [
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_int,
        ]
        library.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        library.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        library.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        library.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        library.espeak_TextToPhonemes.argtypes = [
            ctypes.POINTER(ctypes.c_char_p),
            ctypes.c_int,
            ctypes.c_int,
        ]
        library.espeak_TextToPhonemes.restype = ctypes.c_char_p

        options = INITIALIZE_PHONEME_EVENTS | INITIALIZE_PHONEME_IPA | INITIALIZE_DONT_EXIT
        data_path = espeakng_loader.get_data_path().encode()
        self.sample_rate = library.espeak_Initialize(
            AUDIO_OUTPUT_SYNCHRONOUS, BUFFER_MS, data_path, options
        )
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak-ng failed to initialise (data at {data_path.decode()})")
        self.library = library
        self.lock = threading.Lock()
        self._recording: _Recording | None = None
        self._voice: str | None = None
        # Kept as an attribute: the C library holds only a raw pointer to the callback.
        self._callback = _SynthCallback(self._on_synth)
        library.espeak_SetSynthCallback(self._callback)

    def _on_synth(self, samples, sample_count: int, events) -> int:
        recording = self._recording
        if recording is None:
            return 0
        if samples and sample_count > 0:
            recording.audio.append(np.ctypeslib.as_array(samples, shape=(sample_count,)).copy())
        index = 0
        while events[index].type != EVENT_LIST_TERMINATED:
            event = events[index]
            name = ""
            if event.type == EVENT_PHONEME:
                name = event.id.string.decode("utf-8", errors="ignore")
            recording.events.append(
                (event.type, event.text_position, event.length, event.sample, name)
            )
            index += 1
        return 0  # 0: carry on synthesising

    def set_voice(self, voice: str) -> bool:
        """Select ``voice`` (call with the lock held); False if espeak-ng does not know it.

        Every voice change queues an event for the next synthesis; many of them overflow that
        callback's event list and lose the first word's events, so only change when needed.
        """
        if voice == self._voice:
            return True
        if self.library.espeak_SetVoiceByName(voice.encode()) != EE_OK:
            return False
        self._voice = voice
        return True

    def synthesise(self, text: str, voice: str, words_per_minute: int) -> _Recording:
        encoded = text.encode("utf-8")
        with self.lock:
            self.set_voice(voice)
            self.library.espeak_SetParameter(PARAMETER_RATE, words_per_minute, 0)
            self._recording = recording = _Recording()
            try:
                status = self.library.espeak_Synth(
                    encoded, len(encoded) + 1, 0, POSITION_CHARACTER, 0, CHARS_UTF8, None, None
                )
            finally:
                self._recording = None
        if status != EE_OK:
            raise RuntimeError(f"espeak-ng failed to synthesise {text!r} (error {status})")
        return recording

    def phonemize(self, text: str, voice: str) -> str:
        """IPA of ``text``, clauses joined by spaces."""
        encoded = text.encode("utf-8")
        pointer = ctypes.c_char_p(encoded)
        clauses = []
        with self.lock:
            self.set_voice(voice)
            # Each call phonemizes one clause and moves the pointer on; NULL at the end.
            while pointer.value:
                clause = self.library.espeak_TextToPhonemes(
                    ctypes.byref(pointer), CHARS_UTF8, PHONEMES_IPA
                )
                clauses.append((clause or b"").decode("utf-8", errors="ignore"))
        return " ".join(clauses)


_ESPEAK: _Espeak | None = None
_ESPEAK_LOCK = threading.Lock()


def _espeak() -> _Espeak:
    global _ESPEAK
    with _ESPEAK_LOCK:
        if _ESPEAK is None:
            _ESPEAK = _Espeak()
        return _ESPEAK


def words_per_minute(length_scale: float) -> int:
    """espeak's speaking rate for a length scale (1: its default 175 wpm, 2: half as fast)."""
    rate = round(DEFAULT_WORDS_PER_MINUTE / length_scale)
    return max(MIN_WORDS_PER_MINUTE, min(MAX_WORDS_PER_MINUTE, rate))


class EspeakBackend:
    name = "espeak"

    def __init__(self, voice: str | None, log: Callable[[str], object] = print) -> None:
        self._espeak = _espeak()
        self.voice = voice or DEFAULT_VOICE
        self.sample_rate = self._espeak.sample_rate
        with self._espeak.lock:
            known = self._espeak.set_voice(self.voice)
        if not known:
            raise ValueError(
                f"tts.voice: unknown espeak-ng voice {self.voice!r} (e.g. {DEFAULT_VOICE!r})"
            )
        self._word_ipa: dict[str, str] = {}

    def speak(self, text: str, length_scale: float) -> SpokenSentence:
        recording = self._espeak.synthesise(text, self.voice, words_per_minute(length_scale))
        audio = (
            np.concatenate(recording.audio).astype(np.float32) / 32768.0
            if recording.audio
            else np.zeros(0, dtype=np.float32)
        )
        return SpokenSentence(audio, self.sample_rate, _segments(recording.events, len(audio)))

    def phonemize_word(self, word: str) -> str:
        if word not in self._word_ipa:
            ipa = self._espeak.phonemize(word, self.voice)
            self._word_ipa[word] = unicodedata.normalize("NFD", "".join(ipa.split()))
        return self._word_ipa[word]


def _segments(events: list[tuple[int, int, int, int, str]], total_samples: int):
    """Word segments from espeak's events, each phoneme timed from its start to the next
    event's (the next phoneme, a pause or the end)."""
    segments: list[SpokenSegment] = []
    current: SpokenSegment | None = None
    open_phoneme: tuple[SpokenSegment, int] | None = None  # (segment, first codepoint index)

    def close_open_phoneme(at_sample: int) -> None:
        nonlocal open_phoneme
        if open_phoneme is not None:
            segment, first = open_phoneme
            assert segment.ends is not None
            segment.ends[first:] = [at_sample] * (len(segment.ipa) - first)
            open_phoneme = None

    for event_type, text_position, length, sample, name in events:
        if event_type == EVENT_WORD:
            current = SpokenSegment(
                ipa="", starts=[], ends=[], text_position=text_position - 1, text_length=length
            )
            segments.append(current)
        elif event_type == EVENT_PHONEME:
            close_open_phoneme(sample)
            # An empty name is a pause; phonemes before the first word have no word to go to.
            if name and current is not None:
                ipa = unicodedata.normalize("NFD", name)
                assert current.starts is not None and current.ends is not None
                open_phoneme = (current, len(current.ipa))
                current.ipa += ipa
                current.starts.extend([sample] * len(ipa))
                current.ends.extend([sample] * len(ipa))
        elif event_type in (EVENT_END, EVENT_MSG_TERMINATED):
            close_open_phoneme(sample)
    close_open_phoneme(total_samples)
    return [segment for segment in segments if segment.ipa]
