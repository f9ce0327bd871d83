"""The ``tacotron2`` speech backend: NVIDIA's Tacotron 2 (text -> mel spectrogram) and
WaveGlow (mel spectrogram -> audio), re-implemented so that their released checkpoints load.

Modules: :mod:`.text` (symbols, encoding, chunking; no torch), :mod:`.model` (Tacotron 2),
:mod:`.waveglow` (WaveGlow, denoiser), :mod:`.checkpoints` (loading the released files safely),
:mod:`.synthesis` (the workflow's tts_mel and vocoder steps). Importing this package does not
import torch; the default backends never import it.
"""
