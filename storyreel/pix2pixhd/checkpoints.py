"""pix2pixHD generator checkpoints: NVIDIA's ``*_net_G.pth`` files, local or on GCS.

NVIDIA's training code saves a generator as a plain ``state_dict`` (``net.cpu().state_dict()``).
``load_generator`` reads one (a ``module.`` prefix left by DataParallel is removed), works out from
its keys and shapes whether it is a ``GlobalGenerator`` or a ``LocalEnhancer`` and with which
widths, builds that network and loads the weights with ``strict=True``. Files of the wrong kind
(not a torch file, a Tacotron 2 or WaveGlow checkpoint, a discriminator) fail with a message that
names the file and says what it holds instead.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import torch
from torch import nn

from storyreel.pix2pixhd.networks import GlobalGenerator, LocalEnhancer

__all__ = [
    "CheckpointError",
    "GeneratorCheckpoint",
    "generator_options",
    "load_generator",
    "read_state_dict",
]

DEFAULT_MAX_CHECKPOINT_BYTES = 4 * 1024**3  # an ngf 64 generator is ~730 MB in float32
_RESNET_KEY = re.compile(r"^model\.(\d+)\.conv_block\.1\.weight$")
_LOCAL_KEY = re.compile(r"^model(\d+)_1\.")
_SHOWN_KEYS = 5


class CheckpointError(ValueError):
    """A checkpoint that is not a loadable pix2pixHD generator; the message names the file."""


@dataclass
class GeneratorCheckpoint:
    """A loaded generator, in eval mode on the CPU, and what it was built from."""

    generator: nn.Module
    kind: str  # "global" or "local"
    options: dict = field(default_factory=dict)
    source: str = ""

    @property
    def size_multiple(self) -> int:
        """Frame height and width must be multiples of this."""
        return self.generator.size_multiple


def load_generator(
    location: str | Path,
    *,
    max_bytes: int = DEFAULT_MAX_CHECKPOINT_BYTES,
) -> GeneratorCheckpoint:
    """The generator saved at ``location`` (a file path or ``gs://bucket/name``)."""
    text = str(location)
    if text.startswith("gs://"):
        from storyreel.storage import StorageError, download_object

        with tempfile.TemporaryDirectory(prefix="pix2pixhd-") as scratch:
            local = Path(scratch) / (PurePosixPath(text).name or "net_G.pth")
            try:
                download_object(text, local, max_bytes=max_bytes)
            except StorageError as err:
                raise CheckpointError(f"pix2pixHD checkpoint {text}: {err}") from None
            state = read_state_dict(local, label=text)
    else:
        state = read_state_dict(Path(location), label=text)
    return build_from_state_dict(state, label=text)


def read_state_dict(path: Path, *, label: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a saved ``state_dict`` (only tensors are unpickled: ``weights_only``)."""
    label = label or str(path)
    if not Path(path).is_file():
        raise CheckpointError(f"pix2pixHD checkpoint {label}: no such file")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - garbage bytes fail in many ways inside unpickling
        pickled_class = re.search(r"GLOBAL ([\w.]+)", str(err))
        if pickled_class:
            raise CheckpointError(
                f"pix2pixHD checkpoint {label}: holds pickled Python objects "
                f"({pickled_class.group(1)}), not a plain state_dict (a WaveGlow checkpoint stores "
                "its whole model that way); a pix2pixHD generator is saved as net.state_dict()"
            ) from None
        raise CheckpointError(
            f"pix2pixHD checkpoint {label}: not a PyTorch checkpoint ({type(err).__name__})"
        ) from None
    return _tensors(loaded, label)


def _tensors(loaded: object, label: str) -> dict[str, torch.Tensor]:
    if not isinstance(loaded, Mapping):
        raise CheckpointError(
            f"pix2pixHD checkpoint {label}: holds a {type(loaded).__name__}, not a state_dict"
        )
    if "state_dict" in loaded and isinstance(loaded["state_dict"], Mapping):
        inner = loaded["state_dict"]
        if any(str(key).removeprefix("module.").startswith(_TACOTRON_PREFIXES) for key in inner):
            raise CheckpointError(
                f"pix2pixHD checkpoint {label}: a Tacotron 2 checkpoint (keys "
                f"{_few(list(inner))}), not a pix2pixHD generator"
            )
        # Some training scripts wrap the weights; NVIDIA's pix2pixHD saves them bare.
        loaded = inner
    state = {}
    for key, value in loaded.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"pix2pixHD checkpoint {label}: entry {key!r} is a {type(value).__name__}, "
                f"not a tensor; top-level keys: {_few(list(loaded))}"
            )
        state[str(key).removeprefix("module.")] = value
    return state


_TACOTRON_PREFIXES = ("embedding.", "encoder.convolutions", "decoder.prenet", "postnet.")


def generator_options(state: Mapping[str, torch.Tensor], *, label: str = "state_dict"):
    """``("global" | "local", constructor options)`` of the generator these weights belong to."""
    keys = list(state)
    if any(key.startswith(("scale0_layer", "layer0.")) for key in keys):
        raise CheckpointError(
            f"pix2pixHD checkpoint {label}: a discriminator (net_D; keys {_few(keys)}), "
            "not a generator (net_G)"
        )
    if any(key.startswith(_TACOTRON_PREFIXES) for key in keys):
        raise CheckpointError(
            f"pix2pixHD checkpoint {label}: a Tacotron 2 model (keys {_few(keys)}), "
            "not a pix2pixHD generator"
        )
    if any(key.startswith(("WN.", "upsample.", "convinv.")) for key in keys):
        raise CheckpointError(
            f"pix2pixHD checkpoint {label}: a WaveGlow model (keys {_few(keys)}), "
            "not a pix2pixHD generator"
        )
    blocks = sorted(int(m.group(1)) for key in keys if (m := _RESNET_KEY.match(key)))
    if "model.1.weight" not in state or not blocks:
        raise CheckpointError(
            f"pix2pixHD checkpoint {label}: not a pix2pixHD generator (no model.1.weight or "
            f"ResnetBlocks under model.*; keys {_few(keys)})"
        )
    first_conv = state["model.1.weight"]
    n_downsampling, remainder = divmod(blocks[0] - 4, 3)
    if remainder or n_downsampling < 0 or first_conv.ndim != 4:
        raise CheckpointError(
            f"pix2pixHD checkpoint {label}: first ResnetBlock at model.{blocks[0]} does not "
            "follow a pix2pixHD downsampling stack"
        )
    input_nc = int(first_conv.shape[1])
    enhancers = sorted({int(m.group(1)) for key in keys if (m := _LOCAL_KEY.match(key))})
    if not enhancers:
        last_conv = max(
            int(key.split(".")[1]) for key in keys if re.match(r"^model\.\d+\.weight$", key)
        )
        return "global", {
            "input_nc": input_nc,
            "output_nc": int(state[f"model.{last_conv}.weight"].shape[0]),
            "ngf": int(first_conv.shape[0]),
            "n_downsampling": n_downsampling,
            "n_blocks": len(blocks),
        }
    finest = enhancers[-1]
    local_blocks = {
        int(key.split(".")[1])
        for key in keys
        if key.startswith(f"model{finest}_2.") and ".conv_block." in key
    }
    output_weights = [
        state[key]
        for key in keys
        if key.startswith(f"model{finest}_2.")
        and key.endswith(".weight")
        and "conv_block" not in key
    ]
    return "local", {
        "input_nc": input_nc,
        "output_nc": int(output_weights[-1].shape[0]),
        "ngf": int(state[f"model{finest}_1.1.weight"].shape[0]),
        "n_downsample_global": n_downsampling,
        "n_blocks_global": len(blocks),
        "n_local_enhancers": len(enhancers),
        "n_blocks_local": len(local_blocks),
    }


def build_from_state_dict(
    state: Mapping[str, torch.Tensor], *, label: str = "state_dict"
) -> GeneratorCheckpoint:
    """The generator for ``state`` with its weights loaded (``strict=True``), in eval mode."""
    try:
        kind, options = generator_options(state, label=label)
    except (KeyError, IndexError, ValueError) as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(
            f"pix2pixHD checkpoint {label}: not a pix2pixHD generator ({err!r}); "
            f"keys {_few(list(state))}"
        ) from None
    network_class = GlobalGenerator if kind == "global" else LocalEnhancer
    generator = network_class(**options)
    expected = generator.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"pix2pixHD checkpoint {label}: does not match a {network_class.__name__}"
            f"({_options_text(options)}): {len(missing)} missing keys {_few(missing)}, "
            f"{len(unexpected)} unexpected keys {_few(unexpected)}"
        )
    wrong_shapes = [
        f"{key} {tuple(state[key].shape)} (expected {tuple(value.shape)})"
        for key, value in expected.items()
        if tuple(state[key].shape) != tuple(value.shape)
    ]
    if wrong_shapes:
        raise CheckpointError(
            f"pix2pixHD checkpoint {label}: shapes do not match a {network_class.__name__}"
            f"({_options_text(options)}): {', '.join(wrong_shapes[:_SHOWN_KEYS])}"
        )
    generator.load_state_dict(state, strict=True)
    generator.eval()
    return GeneratorCheckpoint(generator=generator, kind=kind, options=options, source=label)


def _few(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN_KEYS])
    return f"[{shown}{', ...' if len(keys) > _SHOWN_KEYS else ''}]"


def _options_text(options: dict) -> str:
    return ", ".join(f"{name}={value}" for name, value in options.items())
