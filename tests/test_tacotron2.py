"""The tacotron2 backend: NVIDIA-compatible Tacotron 2 and WaveGlow layouts, checkpoint loading
(every container flavour, safely), the text front end, and the tts_mel -> vocoder rules run
through Snakemake with random weights."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import types
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import soundfile

torch = pytest.importorskip("torch")

from conftest import REPO, SNAKEMAKE, run_snakemake  # noqa: E402

from storyreel.tacotron2.checkpoints import (  # noqa: E402
    CheckpointError,
    fuse_conditioning,
    load_tacotron2,
    load_waveglow,
    read_checkpoint,
    waveglow_config_from_state_dict,
)
from storyreel.tacotron2.model import Tacotron2, Tacotron2Config  # noqa: E402
from storyreel.tacotron2.text import (  # noqa: E402
    SYMBOLS,
    encode,
    estimated_steps,
    sentence_chunks,
)
from storyreel.tacotron2.waveglow import Denoiser, WaveGlow, WaveGlowConfig  # noqa: E402

# The state_dict layouts (names, shapes, dtypes) of NVIDIA's released models: see its README.
REFERENCE = Path(__file__).resolve().parent / "data" / "nvidia-state-dicts"

SMALL_WAVEGLOW = {"n_channels": 32, "n_layers": 2}

LAYOUTS = {
    "tacotron2.json": lambda: Tacotron2(),
    "dle_tacotron2.json": lambda: Tacotron2(),
    "waveglow_256.json": lambda: WaveGlow(WaveGlowConfig()),
    "waveglow_256_removed_weightnorm.json": lambda: WaveGlow(WaveGlowConfig(weight_norm=False)),
    "waveglow_256_glow_old.json": lambda: WaveGlow(WaveGlowConfig(per_layer_conditioning=True)),
    "dle_waveglow_256.json": lambda: WaveGlow(WaveGlowConfig(per_layer_conditioning=True)),
    "dle_waveglow_512.json": lambda: WaveGlow(
        WaveGlowConfig(per_layer_conditioning=True, n_channels=512)
    ),
}


def layout(state_dict) -> list[tuple[str, list[int], str]]:
    return [
        (name, list(value.shape), str(value.dtype).removeprefix("torch."))
        for name, value in state_dict.items()
    ]


@pytest.mark.parametrize("reference", sorted(LAYOUTS))
def test_layout_matches_nvidia_reference(reference):
    """Key for key, in order, shape for shape, dtype for dtype (built on the meta device: the
    layout without allocating 268M parameters)."""
    expected = json.loads((REFERENCE / reference).read_text())
    with torch.device("meta"):
        model = LAYOUTS[reference]()
    expected_layout = [(e["name"], e["shape"], e["dtype"]) for e in expected["state_dict"]]
    assert layout(model.state_dict()) == expected_layout
    assert sum(p.numel() for p in model.parameters()) == expected["param_count"]


def test_removing_weight_norm_gives_the_inference_layout_and_the_same_audio():
    with torch.device("meta"):
        folded = WaveGlow().remove_weight_norm()
    expected = json.loads((REFERENCE / "waveglow_256_removed_weightnorm.json").read_text())
    assert layout(folded.state_dict()) == [
        (e["name"], e["shape"], e["dtype"]) for e in expected["state_dict"]
    ]
    torch.manual_seed(1)
    model = WaveGlow(WaveGlowConfig(**SMALL_WAVEGLOW)).eval()
    perturb(model)
    mel, z = torch.randn(1, 80, 2), torch.randn(1, 8, 64)
    before = model.infer(mel, z=z)
    model.remove_weight_norm()
    assert torch.allclose(model.infer(mel, z=z), before, atol=1e-5)


def perturb(model: torch.nn.Module, scale: float = 0.05) -> None:
    """Random weights everywhere (WN's `end` starts at zero, which would hide the couplings)."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(scale * torch.randn_like(parameter))


def test_waveglow_inverts_its_own_forward_pass():
    torch.manual_seed(2)
    for per_layer in (False, True):
        model = WaveGlow(WaveGlowConfig(per_layer_conditioning=per_layer, **SMALL_WAVEGLOW))
        perturb(model)
        mel, audio = torch.randn(1, 80, 10), 0.3 * torch.randn(1, 2560)
        z, log_scales, log_dets = model(mel, audio)
        assert z.shape == (1, 8, 320)
        assert len(log_scales) == len(log_dets) == 12
        assert torch.allclose(model.infer(mel, z=z), audio, atol=1e-4)


def test_tacotron2_inference_shapes_and_stop_gate():
    torch.manual_seed(3)
    model = Tacotron2().eval()
    output = model.infer(list(range(12, 42)), max_decoder_steps=20, gate_threshold=1.0)
    assert output.mel.shape == (80, 20)
    assert output.alignment.shape == (20, 30)
    assert output.reached_max_steps
    assert torch.allclose(output.alignment.sum(dim=1), torch.ones(20), atol=1e-5)
    # A gate threshold of 0 stops at the first frame.
    stopped = model.infer(list(range(12, 42)), max_decoder_steps=20, gate_threshold=0.0)
    assert stopped.steps == 1 and not stopped.reached_max_steps


# --- checkpoint flavours -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tacotron2_model():
    torch.manual_seed(4)
    model = Tacotron2()
    with torch.no_grad():  # batch-norm statistics that are not the defaults
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean") or name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)
    return model.eval()


def assert_same_weights(loaded: torch.nn.Module, original: torch.nn.Module) -> None:
    loaded_state, original_state = loaded.state_dict(), original.state_dict()
    assert list(loaded_state) == list(original_state)
    for key, value in original_state.items():
        assert torch.equal(loaded_state[key], value), key


def test_tacotron2_statedict_container_round_trip(tmp_path, tacotron2_model):
    path = tmp_path / "tacotron2_statedict.pt"
    torch.save(
        {
            "iteration": 1000,
            "state_dict": tacotron2_model.state_dict(),
            "optimizer": {"state": {}, "param_groups": []},
            "learning_rate": 1e-3,
        },
        path,
    )
    loaded = load_tacotron2(path)
    assert_same_weights(loaded, tacotron2_model)
    loaded.load_state_dict(torch.load(path, weights_only=True)["state_dict"], strict=True)


def test_tacotron2_hub_checkpoint_with_module_prefix(tmp_path, tacotron2_model):
    for prefix in ("module.", "module.1."):
        path = tmp_path / f"hub-{prefix}pt"
        state = OrderedDict((prefix + k, v) for k, v in tacotron2_model.state_dict().items())
        torch.save({"state_dict": state, "config": {"n_symbols": 148}, "epoch": 3}, path)
        assert_same_weights(load_tacotron2(path), tacotron2_model)


def test_tacotron2_checkpoint_from_old_pytorch_without_batch_counters(tmp_path, tacotron2_model):
    state = OrderedDict(
        (k, v) for k, v in tacotron2_model.state_dict().items() if "num_batches_tracked" not in k
    )
    path = tmp_path / "old.pt"
    torch.save({"state_dict": state}, path)
    loaded = load_tacotron2(path)
    for key, value in state.items():
        assert torch.equal(loaded.state_dict()[key], value)


def small_waveglow(per_layer: bool = False, seed: int = 5) -> WaveGlow:
    torch.manual_seed(seed)
    model = WaveGlow(WaveGlowConfig(per_layer_conditioning=per_layer, **SMALL_WAVEGLOW))
    perturb(model)
    return model.eval()


def same_audio(loaded: WaveGlow, original: WaveGlow) -> bool:
    mel, z = torch.randn(1, 80, 4), torch.randn(1, 8, 128)
    return torch.allclose(loaded.infer(mel, z=z), original.infer(mel, z=z), atol=1e-5)


def test_waveglow_dle_checkpoint_per_layer_conditioning(tmp_path):
    original = small_waveglow(per_layer=True)
    path = tmp_path / "nvidia_waveglowpyt.pt"
    state = OrderedDict(("module." + k, v) for k, v in original.state_dict().items())
    torch.save({"state_dict": state, "config": {"n_mel_channels": 80}}, path)
    loaded = load_waveglow(path)
    assert loaded.config.per_layer_conditioning and loaded.config.n_channels == 32
    assert same_audio(loaded, original)


def test_waveglow_full_size_checkpoint_round_trip(tmp_path):
    """The released size (87.9M parameters) saved as a state_dict, loaded strict, folded."""
    torch.manual_seed(6)
    original = WaveGlow()
    path = tmp_path / "waveglow_256.pt"
    torch.save({"state_dict": original.state_dict()}, path)
    original.load_state_dict(torch.load(path, weights_only=True)["state_dict"], strict=True)
    loaded = load_waveglow(path)
    assert loaded.config == WaveGlowConfig(weight_norm=False)
    state = loaded.state_dict()
    assert torch.equal(state["upsample.weight"], original.upsample.weight)
    assert torch.equal(state["convinv.11.conv.weight"], original.convinv[11].conv.weight)
    assert torch.equal(state["WN.3.end.weight"], original.WN[3].end.weight)
    for name in ("start", "cond_layer"):
        layer = getattr(original.WN[5], name)
        g, v = layer.weight_g, layer.weight_v
        folded = g * v / v.norm(dim=(1, 2), keepdim=True)
        assert torch.allclose(state[f"WN.5.{name}.weight"], folded, atol=1e-6)


def test_waveglow_without_weight_norm_as_bare_state_dict(tmp_path):
    original = small_waveglow().remove_weight_norm()
    path = tmp_path / "waveglow_inference.pt"
    torch.save(original.state_dict(), path)
    assert same_audio(load_waveglow(path), original)


def test_fusing_per_layer_conditioning_keeps_the_audio():
    per_layer = small_waveglow(per_layer=True)
    fused = WaveGlow(WaveGlowConfig(**SMALL_WAVEGLOW))
    fused.load_state_dict(fuse_conditioning(per_layer.state_dict()), strict=True)
    assert list(fuse_conditioning(per_layer.state_dict())) == list(fused.state_dict())
    assert same_audio(fused.eval(), per_layer)


@pytest.fixture
def glow_module(monkeypatch):
    """A throwaway ``glow`` module whose classes pickle like NVIDIA/waveglow's training did:
    glow.WaveGlow / glow.WN / glow.Invertible1x1Conv holding torch Conv1d layers with the
    original weight-norm hooks."""
    glow = types.ModuleType("glow")
    for name in ("WaveGlow", "WN", "Invertible1x1Conv"):
        cls = type(name, (torch.nn.Module,), {"__module__": "glow"})
        setattr(glow, name, cls)
    monkeypatch.setitem(sys.modules, "glow", glow)
    return glow


def as_original_pickle_model(model: WaveGlow, glow) -> torch.nn.Module:
    """The same weights in the object tree a pickled NVIDIA/waveglow model has."""

    def torch_conv(layer) -> torch.nn.Conv1d:
        conv = torch.nn.Conv1d(
            layer.in_channels, layer.out_channels, layer.kernel_size,
            dilation=layer.dilation, padding=layer.padding,
        )  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            conv = torch.nn.utils.weight_norm(conv)
        with torch.no_grad():
            conv.bias.copy_(layer.bias)
            conv.weight_g.copy_(layer.weight_g)
            conv.weight_v.copy_(layer.weight_v)
        return conv

    top = glow.WaveGlow()
    top.upsample = model.upsample
    top.WN = torch.nn.ModuleList()
    for block in model.WN:
        wn = glow.WN()
        wn.in_layers = torch.nn.ModuleList(torch_conv(layer) for layer in block.in_layers)
        wn.res_skip_layers = torch.nn.ModuleList(
            torch_conv(layer) for layer in block.res_skip_layers
        )
        wn.start = torch_conv(block.start)
        wn.end = block.end
        wn.cond_layer = torch_conv(block.cond_layer)
        wn.n_layers, wn.n_channels = block.n_layers, block.n_channels
        top.WN.append(wn)
    top.convinv = torch.nn.ModuleList()
    for mixing in model.convinv:
        invertible = glow.Invertible1x1Conv()
        invertible.conv = mixing.conv
        top.convinv.append(invertible)
    top.n_flows, top.n_group, top.n_early_every, top.n_early_size = 12, 8, 4, 2
    return top


# The throwaway classes have no source file for the legacy format to record.
@pytest.mark.filterwarnings("ignore:Couldn't retrieve source code")
@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy-format"])
def test_waveglow_pickled_model_loads_through_the_restricted_unpickler(
    tmp_path, glow_module, zip_format
):
    """The released files were written by PyTorch 1.0 (the legacy format); both formats."""
    original = small_waveglow(seed=7)
    pickled = as_original_pickle_model(original, glow_module)
    assert list(pickled.state_dict()) == list(original.state_dict())
    path = tmp_path / "waveglow_256channels_universe_v5.pt"
    content = {"model": pickled, "iteration": 1, "optimizer": None, "learning_rate": 1e-4}
    torch.save(content, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(pickle.UnpicklingError):  # what torch's safe loader says of such a file
        torch.load(path, weights_only=True)
    del sys.modules["glow"]  # the loader must not need the classes
    content = read_checkpoint(path)
    assert type(content["model"]).__name__ == "WaveGlow"
    loaded = load_waveglow(path)
    assert not loaded.config.weight_norm
    assert same_audio(loaded, original)


class _Exploit:
    def __reduce__(self):
        return (exec, (f"open({self.target!r}, 'w').close()",))


def test_a_pickle_that_calls_code_is_refused(tmp_path):
    target = tmp_path / "pwned"
    exploit = _Exploit()
    exploit.target = str(target)
    path = tmp_path / "waveglow_evil.pt"
    torch.save({"model": exploit}, path)
    with pytest.raises(CheckpointError, match=r"waveglow_evil\.pt: refused: .*builtin.*exec"):
        load_waveglow(path)
    assert not target.exists()


def test_a_pix2pixhd_checkpoint_is_named_as_such(tmp_path):
    state = OrderedDict(
        [
            ("model.1.weight", torch.zeros(64, 3, 7, 7)),
            ("model.1.bias", torch.zeros(64)),
            ("model.4.weight", torch.zeros(128, 64, 3, 3)),
            ("model.4.bias", torch.zeros(128)),
        ]
    )
    path = tmp_path / "latest_net_G.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as caught:
        load_tacotron2(path)
    message = str(caught.value)
    assert "latest_net_G.pth" in message and "pix2pixHD global generator" in message
    assert "model.1.weight" in message


def test_a_waveglow_given_as_tacotron2_and_garbage_fail_clearly(tmp_path):
    path = tmp_path / "waveglow.pt"
    torch.save({"state_dict": small_waveglow().state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"not a Tacotron 2 checkpoint.*WaveGlow"):
        load_tacotron2(path)
    text_file = tmp_path / "notes.pt"
    text_file.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_waveglow(text_file)


def test_a_tacotron2_with_a_different_symbol_set_is_refused(tmp_path):
    model = Tacotron2(Tacotron2Config(n_symbols=66, symbols_embedding_dim=32))
    path = tmp_path / "other.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    with pytest.raises(CheckpointError, match="66 symbols"):
        load_tacotron2(path)


@pytest.mark.parametrize(
    "config",
    [
        WaveGlowConfig(),
        WaveGlowConfig(weight_norm=False),
        WaveGlowConfig(per_layer_conditioning=True, n_channels=512),
    ],
    ids=["glow", "inference", "dle-512"],
)
def test_waveglow_configuration_is_read_from_the_weights(config):
    with torch.device("meta"):
        state = WaveGlow(config).state_dict()
    assert waveglow_config_from_state_dict(state) == config


def test_denoiser_keeps_the_length_and_removes_the_bias_hiss():
    model = small_waveglow(seed=10).remove_weight_norm()
    denoiser = Denoiser(model)
    audio = model.infer(torch.zeros(1, 80, 20), sigma=0.0)  # the hiss alone
    assert torch.allclose(denoiser(audio, strength=0.0), audio, atol=1e-4)
    cleaned = denoiser(audio, strength=1.0)
    assert cleaned.shape == audio.shape
    assert cleaned.square().mean() < 0.25 * audio.square().mean()


# --- text front end ------------------------------------------------------------------------


def transcript_sentence(text: str, index: int = 0, paragraph: int = 0) -> dict:
    import re

    return {
        "index": index,
        "paragraph": paragraph,
        "text": text,
        "start_offset": 0,
        "end_offset": len(text),
        "words": [
            {"word": m.group(), "start_offset": m.start(), "end_offset": m.end()}
            for m in re.finditer(r"[^\W\d_]+(?:'[^\W\d_]+)*", text)
        ],
    }


def test_symbol_table():
    assert len(SYMBOLS) == 148
    assert SYMBOLS[:12] == ["_", "-", "!", "'", "(", ")", ",", ".", ":", ";", "?", " "]
    assert SYMBOLS[12] == "A" and SYMBOLS[38] == "a" and SYMBOLS[64] == "@AA"
    assert SYMBOLS[-1] == "@ZH" and len(set(SYMBOLS)) == 148


def test_characters_and_arpabet_encoding():
    sentence = transcript_sentence("Hello, world!")
    phones = {"Hello": ["HH", "AH0", "L", "OW1"], "world": ["W", "ER1", "L", "D"]}

    words_phones = [phones[word["word"]] for word in sentence["words"]]
    [characters] = sentence_chunks(sentence, 1000, False, words_phones)
    assert "".join(SYMBOLS[i] for i in characters.symbol_ids) == "hello, world!"
    [arpabet] = sentence_chunks(sentence, 1000, True, words_phones)
    spelled = [SYMBOLS[i] for i in arpabet.symbol_ids]
    assert spelled == ["@HH", "@AH0", "@L", "@OW1", ",", " ", "@W", "@ER1", "@L", "@D", "!"]
    assert arpabet.symbol_words == [0, 0, 0, 0, -1, -1, 1, 1, 1, 1, -1]
    ids, _ = encode("Caf\u00e9 \u201cs\u00fcd\u201d", [], False)
    assert "".join(SYMBOLS[i] for i in ids) == "cafe sud"


def test_long_sentences_split_at_commas_then_words():
    text = (
        "The council met on Tuesday, and after a long debate about the bridge the members "
        "approved the budget for the coming year."
    )
    sentence = transcript_sentence(text)
    limit = 300  # 42 symbols a chunk
    chunks = sentence_chunks(sentence, limit, False)
    assert [chunk.text.strip() for chunk in chunks][0] == "The council met on Tuesday,"
    assert all(estimated_steps(len(chunk.symbol_ids)) <= limit for chunk in chunks)
    assert [w.index for c in chunks for w in c.words] == list(range(len(sentence["words"])))
    assert "".join(chunk.text for chunk in chunks) == text


# --- the rules, through Snakemake ----------------------------------------------------------


def run_with_config_file(workdir: Path, target: str, config: dict):
    """run_snakemake, with the configuration as a file: --config parses nested values as
    strings, and the tacotron2 settings have numbers."""
    override = workdir / "override.yaml"
    override.write_text(json.dumps(config))  # JSON is YAML
    args = [str(SNAKEMAKE), target, "--snakefile", str(REPO / "Snakefile")]
    args += ["--directory", str(workdir), "--cores", "2"]
    args += ["--configfiles", str(REPO / "config.yaml"), str(override)]
    result = subprocess.run(args, cwd=workdir, capture_output=True, text=True)
    assert result.returncode == 0, (
        f"snakemake failed:\n{result.stdout[-3000:]}{result.stderr[-5000:]}"
    )
    return result


def tacotron2_config(tmp_path: Path, story_file: Path, **tacotron2) -> dict:
    """The workflow's configuration with the tacotron2 backend (other keys: config.yaml's)."""
    return {
        "story_source": str(story_file.parent / "{story}.json"),
        "tts": {
            "backend": "tacotron2",
            "tacotron2": {
                "checkpoint": str(tmp_path / "tacotron2_statedict.pt"),
                "waveglow_checkpoint": str(tmp_path / "waveglow.pt"),
                "device": "cpu",
                **tacotron2,
            },
        },
    }


def test_default_dag_keeps_rule_tts_and_tacotron2_swaps_in_two_rules(tmp_path, story_factory):
    story = story_factory("council")
    default = run_snakemake(
        tmp_path, "stories/council/speech.json", "-n",
        config={"story_source": str(story.parent / "{story}.json")},
    )  # fmt: skip
    assert "tts_mel" not in default.stdout and "vocoder" not in default.stdout
    assert "rule tts:" in default.stdout or "\ntts " in default.stdout
    swapped = run_snakemake(
        tmp_path, "stories/council/speech.json", "-n", config=tacotron2_config(tmp_path, story)
    )
    assert "tts_mel" in swapped.stdout and "vocoder" in swapped.stdout
    assert "rule tts:" not in swapped.stdout


def test_tts_mel_and_vocoder_rules_write_speech_of_the_decoded_length(tmp_path, story_factory):
    """Random weights: the stop gate never fires (threshold 1), so every chunk runs exactly
    max_decoder_steps frames, and the wav holds exactly those frames x 256 samples plus the
    lead-in, pauses and tail."""
    torch.manual_seed(8)
    torch.save({"state_dict": Tacotron2().state_dict()}, tmp_path / "tacotron2_statedict.pt")
    torch.save({"state_dict": small_waveglow(seed=9).state_dict()}, tmp_path / "waveglow.pt")
    story = story_factory("council", text="Budget approved.\n\nWork starts in March.")
    max_steps = 40
    config = tacotron2_config(tmp_path, story, max_decoder_steps=max_steps, gate_threshold=1.0)
    run_with_config_file(tmp_path, "stories/council/speech.json", config)

    folder = tmp_path / "stories" / "council"
    transcript = json.loads((folder / "transcript.json").read_text())
    mel_spec = json.loads((folder / "mel.json").read_text())
    mel = np.load(folder / "mel.npy")
    speech = json.loads((folder / "speech.json").read_text())
    audio, rate = soundfile.read(folder / "speech.wav")

    expected_chunks = [
        chunk.text
        for sentence in transcript["sentences"]
        for chunk in sentence_chunks(sentence, max_steps, False)
    ]
    chunks = [chunk for sentence in mel_spec["sentences"] for chunk in sentence["chunks"]]
    assert [chunk["text"] for chunk in chunks] == expected_chunks
    assert all(chunk["frames"] == max_steps and chunk["reached_max_steps"] for chunk in chunks)
    assert mel.shape == (80, max_steps * len(chunks)) and mel.dtype == np.float32

    # Two paragraphs of one sentence each: lead-in, paragraph pause, tail.
    assert [s["paragraph"] for s in transcript["sentences"]] == [0, 1]
    pauses = round(0.3 * rate) + round(0.8 * rate) + round(0.3 * rate)
    assert rate == 22050
    assert len(audio) == len(chunks) * max_steps * 256 + pauses
    assert speech["duration"] == round(len(audio) / rate, 3)
    assert speech["backend"] == "tacotron2" and speech["sample_rate"] == 22050

    first, second = speech["sentences"]
    first_samples = sum(c["frames"] for c in mel_spec["sentences"][0]["chunks"]) * 256
    assert first["start"] == round(round(0.3 * rate) / rate, 3)
    assert first["end"] == round((round(0.3 * rate) + first_samples) / rate, 3)
    assert second["start"] == round((round(1.1 * rate) + first_samples) / rate, 3)
    for spoken, written in zip(speech["sentences"], transcript["sentences"], strict=True):
        assert [w["word"] for w in spoken["words"]] == [w["word"] for w in written["words"]]
        for word in spoken["words"]:
            assert word["phones"] and all(p[-1] in "012" or p.isalpha() for p in word["phones"])
            if word["start"] is not None:
                assert spoken["start"] <= word["start"] < word["end"] <= spoken["end"]
    assert (folder / "logs" / "tts_mel.log").read_text().count("reached max_decoder_steps")
