"""The tacotron2 backend's two steps: transcript.json -> mel spectrograms (rule tts_mel), and
mel spectrograms -> speech.wav + speech.json (rule vocoder).

tts_mel writes ``mel.npy`` (float32 [80, frames]: every chunk's mel spectrogram, end to end)
and ``mel.json``, which says which frames are which chunk of which sentence, and when each word
was spoken, in decoder frames, from the attention alignment: a frame belongs to the word of
the symbol it attends to most, a word spans its first to last such frame. A word no frame
attended to most has no timing.

vocoder turns each chunk into exactly frames x 256 samples (22.05 kHz) with WaveGlow, joins a
sentence's chunks directly, and joins sentences with the pauses of the other backends: a
lead-in, ``sentence_pause`` between sentences, ``paragraph_pause`` between paragraphs, and the
lead-in again at the end. Unlike those backends it cuts no silence from the sentence edges, so
the wav's length follows from the decoder steps alone.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from storyreel.tacotron2.text import SYMBOLS, sentence_chunks

log = logging.getLogger("storyreel")

SAMPLE_RATE = 22050
HOP_LENGTH = 256
TEXT_MODES = ("characters", "arpabet")


def resolve_device(name: str | None):
    """``auto``: the first CUDA device if torch sees one, else the CPU."""
    import torch

    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"tts.tacotron2.device is {name!r}, but torch sees no CUDA device")
    return device


def _options(tts: Mapping[str, Any]) -> dict:
    options = dict(tts.get("tacotron2") or {})
    if options.get("text", "characters") not in TEXT_MODES:
        raise ValueError(f"tts.tacotron2.text must be one of {TEXT_MODES}, not {options['text']!r}")
    return options


def _required_file(options: Mapping[str, Any], key: str) -> Path:
    value = options.get(key)
    if not value:
        raise ValueError(
            f"tts.tacotron2.{key} is not set: the tacotron2 backend needs a checkpoint file "
            "(no weights are downloaded)"
        )
    return Path(value)


def synthesise_mel(*, transcript: str, mel: str, mel_json: str, tts: dict) -> dict:
    """Rule tts_mel: every sentence of transcript.json as Tacotron 2 mel spectrograms."""
    import torch

    from storyreel.g2p import pronounce
    from storyreel.tacotron2.checkpoints import load_tacotron2

    options = _options(tts)
    checkpoint = _required_file(options, "checkpoint")
    device = resolve_device(options.get("device", "auto"))
    torch.manual_seed(int(options.get("seed", 0)))  # the pre-net's dropout is random
    started = time.perf_counter()
    model = load_tacotron2(checkpoint, device)
    log.info(
        "tacotron2: %s loaded on %s in %.1f s", checkpoint, device, time.perf_counter() - started
    )
    max_steps = int(options.get("max_decoder_steps", 1000))
    gate_threshold = float(options.get("gate_threshold", 0.5))
    use_arpabet = options.get("text", "characters") == "arpabet"

    transcript_data = json.loads(Path(transcript).read_text(encoding="utf-8"))
    mels: list[np.ndarray] = []
    frame = 0
    sentences = []
    for sentence in transcript_data["sentences"]:
        spellings = [word["word"] for word in sentence["words"]]
        phones = [
            pronounce(word, previous)
            for word, previous in zip(spellings, [None, *spellings[:-1]], strict=True)
        ]
        chunks = sentence_chunks(sentence, max_steps, use_arpabet, phones)
        words = [
            {"word": word, "phones": word_phones}
            for word, word_phones in zip(spellings, phones, strict=True)
        ]
        chunk_entries = []
        for chunk in chunks:
            chunk_started = time.perf_counter()
            output = model.infer(chunk.symbol_ids, max_steps, gate_threshold)
            steps = output.steps
            mels.append(output.mel.float().cpu().numpy())
            attended = output.alignment.argmax(dim=1).cpu().tolist()
            chunk_words = []
            for position, word in enumerate(chunk.words):
                frames = [
                    step
                    for step, symbol in enumerate(attended)
                    if chunk.symbol_words[symbol] == position
                ]
                chunk_words.append(
                    {
                        "index": word.index,
                        "start_frame": min(frames) if frames else None,
                        "end_frame": max(frames) + 1 if frames else None,
                    }
                )
            chunk_entries.append(
                {
                    "text": chunk.text,
                    "symbols": "".join(
                        SYMBOLS[i] if len(SYMBOLS[i]) == 1 else "{" + SYMBOLS[i][1:] + "}"
                        for i in chunk.symbol_ids
                    ),
                    "start_frame": frame,
                    "frames": steps,
                    "reached_max_steps": output.reached_max_steps,
                    "words": chunk_words,
                }
            )
            frame += steps
            if output.reached_max_steps:
                log.warning(
                    "tacotron2: sentence %d chunk %r reached max_decoder_steps (%d) before the "
                    "stop gate fired; it may be cut off",
                    sentence["index"],
                    chunk.text,
                    max_steps,
                )
            log.info(
                "tacotron2: sentence %d: %d symbols -> %d frames in %.2f s",
                sentence["index"],
                len(chunk.symbol_ids),
                steps,
                time.perf_counter() - chunk_started,
            )
        sentences.append(
            {
                "index": sentence["index"],
                "paragraph": sentence["paragraph"],
                "words": words,
                "chunks": chunk_entries,
            }
        )

    n_mel = model.config.n_mel_channels
    mel_array = np.concatenate(mels, axis=1) if mels else np.zeros((n_mel, 0), np.float32)
    result = {
        "backend": "tacotron2",
        "checkpoint": checkpoint.name,
        "text": options.get("text", "characters"),
        "sample_rate": SAMPLE_RATE,
        "hop_length": HOP_LENGTH,
        "n_mel_channels": n_mel,
        "frames": int(mel_array.shape[1]),
        "max_decoder_steps": max_steps,
        "gate_threshold": gate_threshold,
        "sentences": sentences,
    }
    _write_npy(Path(mel), mel_array.astype(np.float32))
    _write_json(Path(mel_json), result)
    log.info(
        "tacotron2: %d frames (%.2f s of speech) in %.1f s",
        mel_array.shape[1],
        mel_array.shape[1] * HOP_LENGTH / SAMPLE_RATE,
        time.perf_counter() - started,
    )
    return result


def vocode(*, mel: str, mel_json: str, wav: str, speech: str, tts: dict) -> dict:
    """Rule vocoder: the mel spectrograms as speech.wav, and speech.json."""
    import soundfile
    import torch

    from storyreel.tacotron2.checkpoints import load_waveglow
    from storyreel.tacotron2.waveglow import Denoiser
    from storyreel.tts.audio import fade_edges, silence, to_pcm16

    options = _options(tts)
    checkpoint = _required_file(options, "waveglow_checkpoint")
    device = resolve_device(options.get("device", "auto"))
    torch.manual_seed(int(options.get("seed", 0)))  # the latent is drawn at random
    sigma = float(options.get("sigma", 0.666))
    strength = float(options.get("denoiser_strength") or 0.0)
    started = time.perf_counter()
    waveglow = load_waveglow(checkpoint, device)
    if waveglow.hop_length != HOP_LENGTH:
        raise ValueError(f"{checkpoint}: WaveGlow hop length {waveglow.hop_length}, not 256")
    denoiser = Denoiser(waveglow).to(device) if strength > 0 else None
    log.info(
        "waveglow: %s loaded on %s in %.1f s", checkpoint, device, time.perf_counter() - started
    )

    spec = json.loads(Path(mel_json).read_text(encoding="utf-8"))
    mels = np.load(mel, allow_pickle=False)
    if mels.shape != (waveglow.config.n_mel_channels, spec["frames"]):
        raise ValueError(f"{mel}: shape {mels.shape} does not match {mel_json}")

    lead_in = float(tts["lead_in"])
    pieces = [silence(lead_in, SAMPLE_RATE)]
    position = len(pieces[0])
    sentence_entries = []
    previous_paragraph = None
    for number, sentence in enumerate(spec["sentences"]):
        if number > 0:
            new_paragraph = sentence["paragraph"] != previous_paragraph
            pause = float(tts["paragraph_pause"] if new_paragraph else tts["sentence_pause"])
            pieces.append(silence(pause, SAMPLE_RATE))
            position += len(pieces[-1])
        previous_paragraph = sentence["paragraph"]

        sentence_start = position
        word_times: dict[int, tuple[int, int]] = {}
        for chunk in sentence["chunks"]:
            first, frames = chunk["start_frame"], chunk["frames"]
            chunk_mel = torch.from_numpy(mels[:, first : first + frames]).to(device)[None]
            audio = waveglow.infer(chunk_mel, sigma=sigma)
            if denoiser is not None:
                audio = denoiser(audio, strength)
            samples = audio[0].float().cpu().numpy()
            if len(samples) != frames * HOP_LENGTH:  # the wav's timing rests on this
                raise RuntimeError(f"WaveGlow gave {len(samples)} samples for {frames} frames")
            pieces.append(fade_edges(samples, SAMPLE_RATE))
            for word in chunk["words"]:
                if word["start_frame"] is not None:
                    word_times[word["index"]] = (
                        position + word["start_frame"] * HOP_LENGTH,
                        position + word["end_frame"] * HOP_LENGTH,
                    )
            position += len(samples)
        sentence_entries.append(
            {
                "index": sentence["index"],
                "start": _seconds(sentence_start),
                "end": _seconds(position),
                "words": [
                    {
                        "word": word["word"],
                        "start": _seconds(word_times[index][0]) if index in word_times else None,
                        "end": _seconds(word_times[index][1]) if index in word_times else None,
                        "phones": word["phones"],
                    }
                    for index, word in enumerate(sentence["words"])
                ],
            }
        )
    pieces.append(silence(lead_in, SAMPLE_RATE))

    audio = np.concatenate(pieces)
    duration = len(audio) / SAMPLE_RATE
    elapsed = time.perf_counter() - started
    log.info(
        "waveglow: %.2f s of audio in %.1f s (real-time factor %.3f)",
        duration,
        elapsed,
        elapsed / max(duration, 1e-9),
    )
    result = {
        "backend": "tacotron2",
        "voice": f"{spec['checkpoint']} + {checkpoint.name}",
        "sample_rate": SAMPLE_RATE,
        "duration": round(duration, 3),
        "sentences": sentence_entries,
    }
    wav_path = Path(wav)
    wav_path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(wav_path, to_pcm16(audio), SAMPLE_RATE, subtype="PCM_16")
    _write_json(Path(speech), result)
    return result


def _seconds(samples: int) -> float:
    return round(samples / SAMPLE_RATE, 3)


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def _write_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, array, allow_pickle=False)
    tmp.replace(path)
