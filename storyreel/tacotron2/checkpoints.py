"""Loading Tacotron 2 and WaveGlow checkpoints in the layouts NVIDIA released.

Containers understood:

- ``{'state_dict': ...}`` (NVIDIA/tacotron2's ``tacotron2_statedict.pt``; DeepLearningExamples
  and torch-hub checkpoints, which add ``'config'`` and may prefix every key with ``module.`` or
  ``module.1.`` from multi-GPU or fp16 wrappers), or a bare state_dict;
- NVIDIA/waveglow's ``{'model': WaveGlow, ...}``, which pickles the whole model object (classes
  ``glow.WaveGlow``, ``glow.WN``, ``glow.Invertible1x1Conv`` with torch ``Conv1d`` layers carrying
  weight-norm hooks).

Safety. Plain tensors and containers are read with ``torch.load(weights_only=True)``. A pickled
model cannot be read that way, and ``weights_only=False`` with the standard unpickler would
import the named classes and call whatever callables the file names, so a crafted file runs
arbitrary code. Such files are read with :class:`RestrictedUnpickler` instead: the only globals
it resolves are torch's own tensor-rebuilding functions, ``OrderedDict``/``set``, and a fixed list
of module and hook class names, each mapped to an inert record class defined here that only
stores the attributes it is given (no ``__init__``, no ``__setstate__`` of the real class, no
foreign code). Parameters are then collected from those records into a state_dict and loaded
into this package's :class:`~storyreel.tacotron2.waveglow.WaveGlow` with ``strict=True``. Any other
name in the file stops the load with an error that names it.

Layouts: weight-normalised (``weight_g``/``weight_v``) or folded (``weight``) WaveGlow
convolutions, one fused ``cond_layer`` or per-layer ``cond_layers`` (older NVIDIA/waveglow and
DeepLearningExamples), 256 or 512 WN channels: the model is built to match the file and then
folded for inference. Tacotron 2 checkpoints saved by PyTorch < 0.4.1 lack the batch-norm
``num_batches_tracked`` counters; they are added as zero.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from storyreel.tacotron2.model import Tacotron2, Tacotron2Config
from storyreel.tacotron2.text import SYMBOLS
from storyreel.tacotron2.waveglow import WaveGlow, WaveGlowConfig


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used, with the file named and what is wrong."""


# --- the restricted unpickler -------------------------------------------------------------


class PickledObject:
    """An object of an allowed class in a pickle, kept as its pickled attributes only."""

    kind = "object"

    def __setstate__(self, state: Any) -> None:
        # Stored as given; nothing is called on it.
        self.__dict__["pickled_state"] = state

    @property
    def attributes(self) -> dict:
        state = self.__dict__.get("pickled_state")
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots) form
            state = state[0]
        return state if isinstance(state, dict) else {}


class PickledModule(PickledObject):
    """A pickled ``torch.nn.Module`` (any of the allowed classes)."""

    kind = "module"

    def state_dict(self, prefix: str = "") -> OrderedDict[str, torch.Tensor]:
        """Parameters and persistent buffers in ``nn.Module.state_dict`` order."""
        attributes = self.attributes
        result: OrderedDict[str, torch.Tensor] = OrderedDict()
        for name, value in (attributes.get("_parameters") or {}).items():
            if value is not None:
                result[prefix + name] = value
        non_persistent = attributes.get("_non_persistent_buffers_set") or set()
        for name, value in (attributes.get("_buffers") or {}).items():
            if value is not None and name not in non_persistent:
                result[prefix + name] = value
        for name, child in (attributes.get("_modules") or {}).items():
            if isinstance(child, PickledModule):
                result.update(child.state_dict(f"{prefix}{name}."))
        return result


def _record_class(qualified_name: str, base: type[PickledObject]) -> type:
    return type(qualified_name.rsplit(".", 1)[-1], (base,), {"kind": qualified_name})


# Module classes a whole-model WaveGlow pickle contains (the model's own classes under the
# module names NVIDIA/waveglow's training used, and torch layers), each an inert record here.
_MODULE_CLASSES = [
    f"{module}.{name}"
    for module in ("glow", "glow_old")
    for name in ("WaveGlow", "WN", "Invertible1x1Conv")
] + [
    "torch.nn.modules.conv.Conv1d",
    "torch.nn.modules.conv.ConvTranspose1d",
    "torch.nn.modules.container.ModuleList",
]
_OTHER_CLASSES = [
    "torch.nn.utils.weight_norm.WeightNorm",  # the weight-norm forward hook object
    "argparse.Namespace",  # training options some checkpoints keep
]
_RECORDS: dict[tuple[str, str], type] = {
    tuple(name.rsplit(".", 1)): _record_class(name, PickledModule) for name in _MODULE_CLASSES
} | {tuple(name.rsplit(".", 1)): _record_class(name, PickledObject) for name in _OTHER_CLASSES}
_FUNCTIONS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("__builtin__", "set"): set,  # protocol 2 writes Python 2 module names
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
}


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a class or function outside the allowed list."""


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the allowed names (see the module docstring); refuses everything else."""

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key in _RECORDS:
            return _RECORDS[key]
        if key in _FUNCTIONS:
            return _FUNCTIONS[key]
        raise RefusedGlobal(
            f"the file pickles {module}.{name}, which is not one of the WaveGlow model classes "
            "or tensor types this loader accepts"
        )


# torch.load's pickle_module: Unpickler and load, both restricted.
_RESTRICTED_PICKLE = SimpleNamespace(
    Unpickler=RestrictedUnpickler,
    load=lambda file, **kwargs: RestrictedUnpickler(file, **kwargs).load(),
    __name__="storyreel.tacotron2.restricted_pickle",
)


def read_checkpoint(path: str | Path) -> Any:
    """The unpickled content of a checkpoint file: tensors and containers, or a whole-model
    pickle as :class:`PickledModule` records. Tensors are loaded onto the CPU."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" not in str(err).lower():
            raise CheckpointError(
                f"{path}: not a PyTorch checkpoint ({_first_line(err)})"
            ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({_first_line(err)})") from None
    try:
        with warnings.catch_warnings():
            # The legacy format stores each module class's source to compare on load; the
            # records standing in for those classes have none, which is expected.
            warnings.filterwarnings("ignore", "Couldn't retrieve source code", UserWarning)
            return torch.load(
                path, map_location="cpu", pickle_module=_RESTRICTED_PICKLE, weights_only=False
            )
    except RefusedGlobal as err:
        raise CheckpointError(f"{path}: refused: {_first_line(err)}") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


# --- state dicts --------------------------------------------------------------------------


def extract_state_dict(content: Any, path: str | Path) -> OrderedDict[str, torch.Tensor]:
    """The model's state_dict from a checkpoint's content, wrapper prefixes removed."""
    state = None
    if isinstance(content, PickledModule):
        state = content.state_dict()
    elif isinstance(content, Mapping):
        if "state_dict" in content and isinstance(content["state_dict"], Mapping):
            state = content["state_dict"]
        elif isinstance(content.get("model"), PickledModule):
            state = content["model"].state_dict()
        elif isinstance(content.get("model"), Mapping):
            state = content["model"]
        elif content and all(isinstance(value, torch.Tensor) for value in content.values()):
            state = content
    if state is None or not state:
        what = (
            f"keys {sorted(map(str, content))[:8]}"
            if isinstance(content, Mapping)
            else type(content).__name__
        )
        raise CheckpointError(
            f"{path}: no model weights found (expected 'state_dict', a pickled 'model' or a "
            f"plain state_dict; the file holds {what})"
        )
    return strip_wrapper_prefixes(state)


def strip_wrapper_prefixes(state: Mapping[str, Any]) -> OrderedDict[str, Any]:
    """Remove the ``module.1.`` (fp16 wrapper) or ``module.`` (DistributedDataParallel)
    prefix that every key of a wrapped model carries."""
    result = OrderedDict(state)
    for prefix in ("module.1.", "module."):
        if result and all(key.startswith(prefix) for key in result):
            result = OrderedDict((key[len(prefix) :], value) for key, value in result.items())
    return result


def identify(state: Mapping[str, Any]) -> str:
    """Which model a state_dict looks like, in words."""
    keys = set(state)
    if "embedding.weight" in keys and any(key.startswith("encoder.") for key in keys):
        return "Tacotron 2"
    if "upsample.weight" in keys and any(key.startswith("WN.") for key in keys):
        return "WaveGlow"
    if any(re.match(r"model1_\d+\.", key) for key in keys):
        return "pix2pixHD LocalEnhancer generator"
    if any(re.match(r"(scale\d+_)?layer\d+\.", key) for key in keys):
        return "pix2pixHD multiscale discriminator"
    if "model.1.weight" in keys and any(
        getattr(state[key], "dim", lambda: 0)() == 4 for key in keys
    ):
        return "pix2pixHD global generator"
    return "an unknown model"


def _check_model(state: Mapping[str, Any], expected: str, path: str | Path, known: set[str]):
    found = identify(state)
    if found != expected:
        unexpected = [key for key in state if key not in known][:5]
        raise CheckpointError(
            f"{path}: not a {expected} checkpoint: it looks like {found} "
            f"(unexpected keys: {', '.join(unexpected) or 'none'})"
        )


def _layout_keys(model_class: type[torch.nn.Module]) -> set[str]:
    """The state_dict keys of the default model, built on the meta device (no memory)."""
    with torch.device("meta"):
        return set(model_class().state_dict())


def _load_strict(model: torch.nn.Module, state: Mapping[str, Any], path, name: str) -> None:
    own = model.state_dict()
    missing = [key for key in own if key not in state]
    unexpected = [key for key in state if key not in own]
    mismatched = [
        f"{key} {list(state[key].shape)} (model {list(own[key].shape)})"
        for key in own
        if key in state and tuple(state[key].shape) != tuple(own[key].shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        for label, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", mismatched),
        ):
            if items:
                parts.append(
                    f"{label}: {', '.join(items[:5])}" + (" ..." if len(items) > 5 else "")
                )
        raise CheckpointError(f"{path}: {name} weights do not fit the model ({'; '.join(parts)})")
    converted = {
        key: value.to(own[key].dtype) if value.is_floating_point() else value
        for key, value in state.items()
    }
    model.load_state_dict(converted, strict=True)


# --- Tacotron 2 ---------------------------------------------------------------------------


def tacotron2_config_from_state_dict(state: Mapping[str, torch.Tensor]) -> Tacotron2Config:
    """Layer sizes read from the weights' shapes (defaults where a size leaves no trace)."""
    embedding = state["embedding.weight"]
    encoder_convs = {int(k.split(".")[2]) for k in state if k.startswith("encoder.convolutions.")}
    postnet_convs = {int(k.split(".")[2]) for k in state if k.startswith("postnet.convolutions.")}
    first_conv = state["encoder.convolutions.0.0.conv.weight"]
    location = state["decoder.attention_layer.location_layer.location_conv.conv.weight"]
    return Tacotron2Config(
        n_symbols=embedding.shape[0],
        symbols_embedding_dim=embedding.shape[1],
        encoder_n_convolutions=len(encoder_convs),
        encoder_kernel_size=first_conv.shape[2],
        encoder_embedding_dim=first_conv.shape[0],
        n_mel_channels=state["postnet.convolutions.0.0.conv.weight"].shape[1],
        attention_rnn_dim=state["decoder.attention_rnn.weight_hh"].shape[1],
        decoder_rnn_dim=state["decoder.decoder_rnn.weight_hh"].shape[1],
        prenet_dim=state["decoder.prenet.layers.0.linear_layer.weight"].shape[0],
        attention_dim=state["decoder.attention_layer.v.linear_layer.weight"].shape[1],
        attention_location_n_filters=location.shape[0],
        attention_location_kernel_size=location.shape[2],
        postnet_embedding_dim=state["postnet.convolutions.0.0.conv.weight"].shape[0],
        postnet_kernel_size=state["postnet.convolutions.0.0.conv.weight"].shape[2],
        postnet_n_convolutions=len(postnet_convs),
    )


def load_tacotron2(path: str | Path, device: str | torch.device = "cpu") -> Tacotron2:
    """A Tacotron 2 in eval mode from any of the supported checkpoint containers."""
    state = extract_state_dict(read_checkpoint(path), path)
    _check_model(state, "Tacotron 2", path, _layout_keys(Tacotron2))
    state = OrderedDict(state)
    # PyTorch < 0.4.1 saved batch norm without its step counter.
    for key in [k for k in state if k.endswith(".running_mean")]:
        counter = key.removesuffix("running_mean") + "num_batches_tracked"
        state.setdefault(counter, torch.tensor(0, dtype=torch.long))
    try:
        config = tacotron2_config_from_state_dict(state)
    except (KeyError, IndexError) as err:
        raise CheckpointError(f"{path}: incomplete Tacotron 2 weights (no {err})") from None
    if config.n_symbols != len(SYMBOLS):
        raise CheckpointError(
            f"{path}: the embedding has {config.n_symbols} symbols; the text front end has the "
            f"{len(SYMBOLS)} of NVIDIA's English symbol set"
        )
    model = Tacotron2(config)
    _load_strict(model, _reorder(state, model), path, "Tacotron 2")
    return model.to(device).eval()


def _reorder(state: Mapping[str, Any], model: torch.nn.Module) -> OrderedDict[str, Any]:
    own = model.state_dict()
    return OrderedDict(
        [(key, state[key]) for key in own if key in state]
        + [(key, value) for key, value in state.items() if key not in own]
    )


# --- WaveGlow -----------------------------------------------------------------------------


def waveglow_config_from_state_dict(state: Mapping[str, torch.Tensor]) -> WaveGlowConfig:
    """The configuration (and layout flags) of the WaveGlow these weights belong to."""
    flows = sorted({int(k.split(".")[1]) for k in state if k.startswith("convinv.")})
    sizes = [state[f"convinv.{flow}.conv.weight"].shape[0] for flow in flows]
    drops = [
        (flow, sizes[flow - 1] - sizes[flow])
        for flow in flows[1:]
        if sizes[flow] != sizes[flow - 1]
    ]
    early_every = drops[0][0] if drops else len(flows)
    early_size = drops[0][1] if drops else 0
    weight_norm = "WN.0.start.weight_g" in state
    start = state["WN.0.start.weight_v" if weight_norm else "WN.0.start.weight"]
    in_layer = "weight_v" if weight_norm else "weight"
    layers = sorted({int(k.split(".")[3]) for k in state if k.startswith("WN.0.in_layers.")})
    return WaveGlowConfig(
        n_mel_channels=state["upsample.weight"].shape[0],
        n_flows=len(flows),
        n_group=sizes[0],
        n_early_every=early_every,
        n_early_size=early_size,
        n_layers=len(layers),
        n_channels=start.shape[0],
        kernel_size=state[f"WN.0.in_layers.0.{in_layer}"].shape[2],
        weight_norm=weight_norm,
        per_layer_conditioning="WN.0.cond_layers.0.bias" in state,
    )


def load_waveglow(path: str | Path, device: str | torch.device = "cpu") -> WaveGlow:
    """A WaveGlow in eval mode with weight norm folded, from any supported container."""
    state = extract_state_dict(read_checkpoint(path), path)
    _check_model(state, "WaveGlow", path, _layout_keys(WaveGlow))
    try:
        config = waveglow_config_from_state_dict(state)
    except (KeyError, IndexError) as err:
        raise CheckpointError(f"{path}: incomplete WaveGlow weights (no {err})") from None
    with torch.device("meta"):
        layout = WaveGlow(config)  # names and shapes only, nothing allocated
    model = WaveGlow(config)
    _load_strict(model, _reorder(state, layout), path, "WaveGlow")
    return model.remove_weight_norm().to(device).eval()


def fuse_conditioning(state: Mapping[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """A per-layer-conditioning WaveGlow state_dict (``cond_layers.{i}``) in the fused layout
    (one ``cond_layer`` per WN, outputs stacked in layer order). Weight norm is kept where the
    input has it: the fused weight's g is recomputed as the norm of each output row."""
    result: OrderedDict[str, torch.Tensor] = OrderedDict()
    pending: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    for key, value in state.items():
        match = re.match(r"(WN\.\d+\.)cond_layers\.(\d+)\.(\w+)$", key)
        if match:
            pending.setdefault(match[1], {}).setdefault(int(match[2]), {})[match[3]] = value
            continue
        result[key] = value
        block = re.match(r"(WN\.\d+\.)end\.bias$", key)
        if block and block[1] in pending:
            layers = [pending[block[1]][index] for index in sorted(pending[block[1]])]
            result.update(_fused(block[1], layers))
    return result


def _fused(prefix: str, layers: list[dict[str, torch.Tensor]]) -> OrderedDict[str, torch.Tensor]:
    weights = []
    for layer in layers:
        if "weight_v" in layer:
            v, g = layer["weight_v"], layer["weight_g"]
            weights.append(v * (g / v.norm(dim=(1, 2), keepdim=True)))
        else:
            weights.append(layer["weight"])
    weight = torch.cat(weights, dim=0)
    bias = torch.cat([layer["bias"] for layer in layers], dim=0)
    if "weight_v" in layers[0]:
        return OrderedDict(
            [
                (prefix + "cond_layer.bias", bias),
                (prefix + "cond_layer.weight_g", weight.norm(dim=(1, 2), keepdim=True)),
                (prefix + "cond_layer.weight_v", weight),
            ]
        )
    return OrderedDict([(prefix + "cond_layer.bias", bias), (prefix + "cond_layer.weight", weight)])
