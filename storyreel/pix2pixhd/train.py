"""Train a presenter's pix2pixHD generator on the newsroom's own video of that presenter.

The recipe is pix2pixHD's: a conditional GAN with least-squares (LSGAN) losses, a multiscale
PatchGAN discriminator that sees the sketch and the image, and a feature-matching loss on the
discriminator's intermediate features (weight ``lambda_feat``); a VGG19 perceptual loss is added
when ``vgg_weights`` names a local weights file (torchvision's ``vgg19`` layout; nothing is
downloaded). Adam with lr 0.0002 and beta1 0.5 for both networks.

Training runs in stages (config ``training.stages``): usually the global generator at the
coarse size first, then the local enhancer at full size, whose inner global generator starts
from the first stage's weights and stays fixed for ``fix_global_steps`` while only the local
branches learn. Steps are counted over all stages; step ``s`` is the s-th optimisation step.

Files, in ``{models_dir}/{presenter}/``:

- ``latest_net_G.pth``, ``latest_net_D.pth``: plain ``state_dict`` files in NVIDIA's layout
  (what ``torch.save(net.cpu().state_dict(), ...)`` writes in pix2pixHD), loadable by the render
  backend and by NVIDIA's code (``--netG global`` or ``--netG local --ngf ngf/2``).
- ``training.json``: what was trained (generator, size, ngf, step, the video crop box).
- ``training/state.pt``: everything to resume (both networks, both optimizers, the step);
  written every ``checkpoint_every`` steps, at each stage's end and at the end. A new run
  continues from it at the next step; delete the folder to start over.
- ``training/loss_log.jsonl``: one JSON object per logged step (losses, seconds per step) and
  per sample (``fixed_l1``: mean absolute error of the generator on a fixed batch, in [-1, 1]
  units).
- ``training/samples/step-{step:07d}.png``: rows of sketch | generated | real for that batch.
- ``training/pairs/``: the cached training pairs (``storyreel.pix2pixhd.dataset``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from storyreel.pix2pixhd.dataset import PairSet, prepare_pairs, read_manifest, size_name
from storyreel.pix2pixhd.networks import GlobalGenerator, LocalEnhancer, MultiscaleDiscriminator
from storyreel.pix2pixhd.sketch import from_network_output, to_network_input

log = logging.getLogger(__name__)

STATE_FORMAT = "storyreel-pix2pixhd-training"
STATE_VERSION = 1
IMAGE_CHANNELS = 3  # the sketch is a 3-channel image (label_nc 0), and so is the output

# Settings and their defaults (config.yaml's `training` section documents each).
DEFAULTS: dict[str, Any] = {
    "presenter": None,
    "video": None,
    "models_dir": "models",
    "device": "auto",
    "gpu_model": "nvidia-l4",
    "fps": None,
    "max_frames": None,
    "batch_size": 1,
    "ngf": 64,
    "n_downsample_global": 4,
    "n_blocks_global": 9,
    "n_blocks_local": 3,
    "ndf": 64,
    "n_layers_D": 3,
    "num_D": 2,
    "lr": 0.0002,
    "beta1": 0.5,
    "lambda_feat": 10.0,
    "vgg_weights": None,
    "stages": [],
    "log_every": 100,
    "sample_every": 1000,
    "checkpoint_every": 1000,
    "sample_count": 4,
    "seed": 0,
}
# Settings that fix the networks' shapes: a saved state must agree with them.
ARCHITECTURE_KEYS = (
    "ngf",
    "n_downsample_global",
    "n_blocks_global",
    "n_blocks_local",
    "ndf",
    "n_layers_D",
    "num_D",
)
GENERATORS = ("global", "local")


class TrainingError(ValueError):
    """The training configuration or a saved training state is wrong; the message says why."""


@dataclass(frozen=True)
class Stage:
    """Steps ``first_step`` .. ``last_step`` (inclusive) of the whole run."""

    index: int
    generator: str
    size: tuple[int, int]  # (width, height)
    steps: int
    fix_global_steps: int
    first_step: int

    @property
    def last_step(self) -> int:
        return self.first_step + self.steps - 1

    def generator_scope(self, step: int) -> str:
        """Which generator parameters step ``step`` trains: global, local-fixed or local."""
        if self.generator == "global":
            return "global"
        return "local-fixed" if step - self.first_step < self.fix_global_steps else "local"


def parse_settings(training: dict) -> dict:
    """The ``training`` section with defaults filled in and checked (errors name the key)."""
    unknown = set(training) - set(DEFAULTS)
    if unknown:
        raise TrainingError(f"training: unknown keys {', '.join(sorted(unknown))}")
    settings = {**DEFAULTS, **training}
    for key in ("batch_size", "ngf", "ndf", "n_layers_D", "num_D", "log_every", "sample_every"):
        if not isinstance(settings[key], int) or settings[key] < 1:
            raise TrainingError(f"training.{key} is {settings[key]!r}: expected an integer >= 1")
    if settings["ngf"] % 2:
        raise TrainingError(
            f"training.ngf is {settings['ngf']}: must be even (the local enhancer has ngf / 2)"
        )
    if not settings["stages"]:
        raise TrainingError("training.stages is empty: give at least one stage")
    stages, first_step, seen_local = [], 1, False
    for index, raw in enumerate(settings["stages"]):
        label = f"training.stages[{index}]"
        extra = set(raw) - {"generator", "size", "steps", "fix_global_steps"}
        if extra:
            raise TrainingError(f"{label}: unknown keys {', '.join(sorted(extra))}")
        generator = raw.get("generator")
        if generator not in GENERATORS:
            raise TrainingError(f"{label}.generator is {generator!r}: expected global or local")
        if generator == "global" and seen_local:
            raise TrainingError(f"{label}: a global stage cannot follow a local one")
        seen_local |= generator == "local"
        size = raw.get("size")
        if not (isinstance(size, Sequence) and len(size) == 2 and all(int(v) > 0 for v in size)):
            raise TrainingError(f"{label}.size is {size!r}: expected [width, height]")
        size = (int(size[0]), int(size[1]))
        multiple = 2 ** (settings["n_downsample_global"] + (generator == "local"))
        if size[0] % multiple or size[1] % multiple:
            raise TrainingError(
                f"{label}.size {size[0]}x{size[1]}: both sides must be multiples of {multiple} "
                f"for the {generator} generator"
            )
        steps = raw.get("steps")
        if not isinstance(steps, int) or steps < 1:
            raise TrainingError(f"{label}.steps is {steps!r}: expected an integer >= 1")
        fix = raw.get("fix_global_steps", 0) if generator == "local" else 0
        if not isinstance(fix, int) or fix < 0:
            raise TrainingError(f"{label}.fix_global_steps is {fix!r}: expected an integer >= 0")
        stages.append(Stage(index, generator, size, steps, fix, first_step))
        first_step += steps
    settings["stages"] = stages
    return settings


# --- networks -----------------------------------------------------------------------------------


def build_generator(settings: dict, generator: str) -> nn.Module:
    """The stage's generator: ``GlobalGenerator(ngf)`` or ``LocalEnhancer(ngf / 2)``, whose
    inner global generator then has ``ngf`` filters (NVIDIA's ``--netG local --ngf 32`` after
    a ``--ngf 64`` global run)."""
    if generator == "global":
        return GlobalGenerator(
            IMAGE_CHANNELS,
            IMAGE_CHANNELS,
            ngf=settings["ngf"],
            n_downsampling=settings["n_downsample_global"],
            n_blocks=settings["n_blocks_global"],
        )
    return LocalEnhancer(
        IMAGE_CHANNELS,
        IMAGE_CHANNELS,
        ngf=settings["ngf"] // 2,
        n_downsample_global=settings["n_downsample_global"],
        n_blocks_global=settings["n_blocks_global"],
        n_local_enhancers=1,
        n_blocks_local=settings["n_blocks_local"],
    )


def build_discriminator(settings: dict) -> MultiscaleDiscriminator:
    return MultiscaleDiscriminator(
        2 * IMAGE_CHANNELS,
        ndf=settings["ndf"],
        n_layers=settings["n_layers_D"],
        num_D=settings["num_D"],
        get_interm_feat=True,  # the feature-matching loss needs every block's features
    )


def init_weights(module: nn.Module) -> None:
    """pix2pixHD's initialisation: conv weights ~ N(0, 0.02)."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(layer.weight, 0.0, 0.02)


def global_into_local(global_state: dict, local: LocalEnhancer) -> None:
    """Start the local enhancer's inner global generator from a trained global generator.

    The inner one is the global generator without its output pad/conv/tanh: every ``model.*``
    key but the last conv's matches in name and shape.
    """
    own = local.state_dict()
    inner = {key: value for key, value in global_state.items() if key in own}
    missing = [key for key in own if key.startswith("model.") and key not in inner]
    if missing:
        raise TrainingError(f"the global generator lacks {missing[:3]}: was ngf changed?")
    for key, value in inner.items():
        if own[key].shape != value.shape:
            raise TrainingError(
                f"global generator {key} is {tuple(value.shape)}, the local enhancer expects "
                f"{tuple(own[key].shape)}"
            )
    local.load_state_dict(inner, strict=False)


def generator_parameters(generator: nn.Module, scope: str) -> list[nn.Parameter]:
    """The parameters a step of ``scope`` trains (local-fixed: the local branches only)."""
    if scope == "local-fixed":
        return [p for name, p in generator.named_parameters() if not name.startswith("model.")]
    return list(generator.parameters())


# VGG19 feature layers in torchvision's numbering ("features.{i}"); "M" is a max pool.
VGG19_LAYOUT = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M"]
VGG19_LAYOUT += [512, 512, 512, 512]
# The perceptual loss compares relu1_1, relu2_1, relu3_1, relu4_1 and relu5_1 (the outputs of
# features.1, .6, .11, .20, .29), weighted as pix2pixHD weights them.
VGG_TAPS = (1, 6, 11, 20, 29)
VGG_WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Vgg19Features(nn.Module):
    """VGG19's convolutional part up to relu5_1, with torchvision's ``features.*`` keys."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in VGG19_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, int(item), 3, padding=1), nn.ReLU(inplace=False)]
                channels = int(item)
        self.features = nn.Sequential(*layers[: VGG_TAPS[-1] + 1])
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        # Generator images are in [-1, 1]; VGG was trained on ImageNet-normalised [0, 1] input.
        x = ((image + 1) / 2 - self.mean) / self.std
        taps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in VGG_TAPS:
                taps.append(x)
        return taps


def load_vgg19(path: str | Path, device: torch.device) -> Vgg19Features:
    """VGG19 features from a local weights file in torchvision's layout (``vgg19-*.pth``)."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"training.vgg_weights {path}: file does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    network = Vgg19Features()
    wanted = {key for key in network.state_dict() if key.startswith("features.")}
    features = {key: value for key, value in state.items() if key in wanted}
    if set(features) != wanted:
        missing = sorted(wanted - set(features))[:3]
        raise TrainingError(
            f"training.vgg_weights {path}: not torchvision VGG19 weights (missing {missing})"
        )
    try:
        network.load_state_dict(features, strict=False)
    except RuntimeError as err:
        raise TrainingError(f"training.vgg_weights {path}: wrong shapes ({err})") from None
    network.requires_grad_(False)
    return network.to(device).eval()


# --- losses -------------------------------------------------------------------------------------


def lsgan_loss(predictions: list[list[torch.Tensor]], real: bool) -> torch.Tensor:
    """Least-squares GAN loss of every scale's patch logits against 1 (real) or 0, summed."""
    total = torch.zeros((), device=predictions[0][-1].device)
    for scale in predictions:
        logits = scale[-1]
        target = torch.ones_like(logits) if real else torch.zeros_like(logits)
        total = total + nn.functional.mse_loss(logits, target)
    return total


def feature_matching_loss(
    fake: list[list[torch.Tensor]], real: list[list[torch.Tensor]], n_layers: int, weight: float
) -> torch.Tensor:
    """L1 between the discriminator's features of fake and real, over scales and blocks."""
    feature_weight = 4.0 / (n_layers + 1)
    scale_weight = 1.0 / len(fake)
    total = torch.zeros((), device=fake[0][-1].device)
    for fake_scale, real_scale in zip(fake, real, strict=True):
        for fake_map, real_map in zip(fake_scale[:-1], real_scale[:-1], strict=True):
            l1 = nn.functional.l1_loss(fake_map, real_map.detach())
            total = total + scale_weight * feature_weight * weight * l1
    return total


def vgg_loss(vgg: Vgg19Features, fake: torch.Tensor, real: torch.Tensor, weight: float):
    total = torch.zeros((), device=fake.device)
    for layer_weight, fake_map, real_map in zip(VGG_WEIGHTS, vgg(fake), vgg(real), strict=True):
        total = total + weight * layer_weight * nn.functional.l1_loss(fake_map, real_map.detach())
    return total


# --- data ---------------------------------------------------------------------------------------


def batch_indices(step: int, batch_size: int, count: int, seed: int) -> list[int]:
    """The pairs of step ``step`` (1-based): epochs of seeded shuffles, a function of the step
    alone, so a resumed run draws exactly what an uninterrupted one would."""
    indices = []
    for position in range((step - 1) * batch_size, step * batch_size):
        epoch, offset = divmod(position, count)
        order = np.random.default_rng([seed, epoch]).permutation(count)
        indices.append(int(order[offset]))
    return indices


class PairLoader:
    """Tensors of a pair set's batches; pairs stay in memory while they fit in ``memory_mb``."""

    def __init__(self, pairs: PairSet, device: torch.device, memory_mb: int = 2048) -> None:
        self.pairs = pairs
        self.device = device
        width, height = pairs.size
        self._keep = pairs.count * width * height * 6 <= memory_mb * 2**20
        self._kept: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _pair(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        if k in self._kept:
            return self._kept[k]
        pair = self.pairs.load(k)
        if self._keep:
            self._kept[k] = pair
        return pair

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        sketches, frames = zip(*(self._pair(k) for k in indices), strict=True)
        sketch = torch.from_numpy(to_network_input(np.stack(sketches)))
        frame = torch.from_numpy(to_network_input(np.stack(frames)))
        return sketch.to(self.device), frame.to(self.device)


def fixed_indices(count: int, sample_count: int) -> list[int]:
    """Evenly spaced pairs for the sample sheets and ``fixed_l1``; the same in every stage."""
    n = max(1, min(sample_count, count))
    return sorted({round(i * (count - 1) / max(1, n - 1)) for i in range(n)})


def write_sample_sheet(
    path: Path, sketch: torch.Tensor, fake: torch.Tensor, real: torch.Tensor
) -> None:
    """One row per example: input sketch | generated | real."""
    columns = [from_network_output(t.detach().cpu().numpy()) for t in (sketch, fake, real)]
    rows = [np.concatenate([column[i] for column in columns], axis=1) for i in range(len(real))]
    sheet = np.concatenate(rows, axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    if not cv2.imwrite(str(tmp), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {tmp}")
    tmp.replace(path)


# --- state --------------------------------------------------------------------------------------


def choose_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        log.info("training.device auto: no CUDA device, training on the CPU")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(f"training.device is {name!r} but torch sees no CUDA device")
    return torch.device(name)


def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().cpu().clone() for key, value in module.state_dict().items()}


def load_state(path: Path, settings: dict) -> dict | None:
    """The saved training state, checked against the settings; None when there is none."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: say which and what to do
        raise TrainingError(f"{path}: not a readable training state ({err}); delete it") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise TrainingError(f"{path}: not a storyreel pix2pixHD training state; delete it")
    if state.get("version") != STATE_VERSION:
        raise TrainingError(f"{path}: training state version {state.get('version')}, expected 1")
    saved = state["architecture"]
    changed = [key for key in ARCHITECTURE_KEYS if saved.get(key) != settings[key]]
    if changed:
        details = ", ".join(f"{key} {saved.get(key)} -> {settings[key]}" for key in changed)
        raise TrainingError(
            f"{path}: saved with other network settings ({details}); restore them or delete "
            f"{path.parent} to start over"
        )
    return state


class Trainer:
    """The networks, optimizers and step of one presenter's training run."""

    def __init__(self, settings: dict, device: torch.device, state: dict | None) -> None:
        self.settings = settings
        self.device = device
        self.stages: list[Stage] = settings["stages"]
        self.step = 0
        self.generator_kind: str | None = None
        self.scope: str | None = None
        self.G: nn.Module | None = None
        self.opt_G: torch.optim.Optimizer | None = None
        torch.manual_seed(settings["seed"])
        self.D = build_discriminator(settings).to(device)
        init_weights(self.D)
        self.opt_D = self._adam(self.D.parameters())
        self._saved_G_scope: str | None = None
        self._saved_opt_G: dict | None = None
        if state is not None:
            self.step = int(state["step"])
            self.D.load_state_dict(state["D"])
            self.opt_D.load_state_dict(state["opt_D"])
            self.generator_kind = state["generator"]
            self.G = build_generator(settings, self.generator_kind).to(device)
            self.G.load_state_dict(state["G"])
            self._saved_G_scope = state["scope"]
            self._saved_opt_G = state["opt_G"]
        self.vgg = None
        if settings["vgg_weights"]:
            self.vgg = load_vgg19(settings["vgg_weights"], device)
        else:
            log.info("training.vgg_weights is null: no VGG perceptual loss")

    def _adam(self, parameters) -> torch.optim.Optimizer:
        betas = (self.settings["beta1"], 0.999)
        return torch.optim.Adam(parameters, lr=self.settings["lr"], betas=betas)

    @property
    def total_steps(self) -> int:
        return self.stages[-1].last_step

    def stage_of(self, step: int) -> Stage:
        for stage in self.stages:
            if stage.first_step <= step <= stage.last_step:
                return stage
        return self.stages[-1]

    def prepare(self, stage: Stage, step: int) -> None:
        """Set up the generator and its optimizer for ``step`` of ``stage``: a new generator
        at a stage change (a local one starts from the global weights), a new optimizer when
        the trained parameters change (as pix2pixHD does when the global part is released)."""
        if self.generator_kind != stage.generator:
            previous = self.G
            generator = build_generator(self.settings, stage.generator)
            torch.manual_seed(self.settings["seed"] + 1000 * (stage.index + 1))
            init_weights(generator)
            if previous is not None and self.generator_kind == "global":
                global_into_local(_cpu_state(previous), generator)
                log.info("stage %d: local enhancer starts from the global generator", stage.index)
            elif previous is not None:
                raise TrainingError(
                    f"the saved state holds a {self.generator_kind} generator; stage "
                    f"{stage.index} trains a {stage.generator} one"
                )
            self.G = generator.to(self.device)
            self.generator_kind = stage.generator
            self.opt_G, self.scope = None, None
        scope = stage.generator_scope(step)
        if self.scope != scope:
            assert self.G is not None
            self.opt_G = self._adam(generator_parameters(self.G, scope))
            if self._saved_opt_G is not None and self._saved_G_scope == scope:
                self.opt_G.load_state_dict(self._saved_opt_G)
            self._saved_opt_G = None
            if self.scope is not None or scope != "global":
                log.info("step %d: training the %s generator parameters", step, scope)
            self.scope = scope

    def train_step(self, sketch: torch.Tensor, real: torch.Tensor) -> dict[str, float]:
        """One pix2pixHD iteration: the generator's update, then the discriminator's."""
        assert self.G is not None and self.opt_G is not None
        settings = self.settings
        self.G.train()
        fake = self.G(sketch)
        pred_fake_for_D = self.D(torch.cat([sketch, fake.detach()], dim=1))
        pred_real = self.D(torch.cat([sketch, real], dim=1))
        loss_D_fake = lsgan_loss(pred_fake_for_D, real=False)
        loss_D_real = lsgan_loss(pred_real, real=True)

        pred_fake = self.D(torch.cat([sketch, fake], dim=1))
        loss_G_GAN = lsgan_loss(pred_fake, real=True)
        loss_G_feat = feature_matching_loss(
            pred_fake, pred_real, settings["n_layers_D"], settings["lambda_feat"]
        )
        loss_G = loss_G_GAN + loss_G_feat
        losses = {"G_GAN": loss_G_GAN, "G_GAN_Feat": loss_G_feat}
        if self.vgg is not None:
            loss_G_VGG = vgg_loss(self.vgg, fake, real, settings["lambda_feat"])
            loss_G = loss_G + loss_G_VGG
            losses["G_VGG"] = loss_G_VGG

        self.opt_G.zero_grad(set_to_none=True)
        loss_G.backward()
        self.opt_G.step()

        loss_D = 0.5 * (loss_D_fake + loss_D_real)
        self.opt_D.zero_grad(set_to_none=True)
        loss_D.backward()
        self.opt_D.step()
        losses.update(D_real=loss_D_real, D_fake=loss_D_fake)
        with torch.no_grad():
            losses["L1"] = (fake - real).abs().mean()
        return {name: round(float(value.detach()), 6) for name, value in losses.items()}

    @torch.no_grad()
    def generate(self, sketch: torch.Tensor) -> torch.Tensor:
        assert self.G is not None
        self.G.eval()
        return self.G(sketch)

    def state(self) -> dict:
        assert self.G is not None and self.opt_G is not None
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "step": self.step,
            "generator": self.generator_kind,
            "scope": self.scope,
            "architecture": {key: self.settings[key] for key in ARCHITECTURE_KEYS},
            "G": _cpu_state(self.G),
            "D": _cpu_state(self.D),
            "opt_G": self.opt_G.state_dict(),
            "opt_D": self.opt_D.state_dict(),
        }


# --- the run ------------------------------------------------------------------------------------


class LossLog:
    """``loss_log.jsonl``: appended line by line; on resume, lines after the saved step go."""

    def __init__(self, path: Path, resume_step: int) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if path.is_file() and resume_step > 0:
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line)["step"] <= resume_step:
                        kept.append(line)
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a line cut short by a killed run
        path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def write(self, record: dict) -> None:
        with self.path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(record) + "\n")


def train(
    settings: dict,
    out_dir: str | Path,
    *,
    video: str | Path | None = None,
    ffmpeg: str = "bundled",
    stop_after: int | None = None,
) -> dict:
    """Train (or resume training) the presenter model into ``out_dir``; return the summary.

    ``settings`` is a parsed ``training`` section (``parse_settings``). ``stop_after`` ends the
    run after that step (the state is saved), as if the job had been stopped there.
    """
    out_dir = Path(out_dir)
    work = out_dir / "training"
    work.mkdir(parents=True, exist_ok=True)
    video = video or settings["video"]
    if not video:
        raise TrainingError("training.video is not set: give the presenter video to train on")
    stages: list[Stage] = settings["stages"]
    sizes = [stage.size for stage in stages]
    pair_sets = prepare_pairs(
        video,
        work / "pairs",
        sizes,
        ffmpeg=ffmpeg,
        fps=settings["fps"],
        max_frames=settings["max_frames"],
    )
    manifest = read_manifest(work / "pairs") or {}
    device = choose_device(settings["device"])
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes within a stage
    state_path = work / "state.pt"
    state = load_state(state_path, settings)
    trainer = Trainer(settings, device, state)
    del state
    loss_log = LossLog(work / "loss_log.jsonl", trainer.step)
    if trainer.step:
        log.info("resuming at step %d of %d", trainer.step + 1, trainer.total_steps)
    last = min(trainer.total_steps, stop_after or trainer.total_steps)
    loaders: dict[tuple[int, int], PairLoader] = {}
    fixed_l1 = None

    def loader(stage: Stage) -> PairLoader:
        if stage.size not in loaders:
            loaders.clear()  # one size in memory at a time
            loaders[stage.size] = PairLoader(pair_sets[stage.size], device)
        return loaders[stage.size]

    def sample(stage: Stage) -> float:
        data = loader(stage)
        sketch, real = data.batch(fixed_indices(data.pairs.count, settings["sample_count"]))
        fake = trainer.generate(sketch)
        error = float((fake - real).abs().mean())
        name = f"samples/step-{trainer.step:07d}.png"
        write_sample_sheet(work / name, sketch, fake, real)
        loss_log.write(
            {
                "step": trainer.step,
                "stage": stage.index,
                "generator": stage.generator,
                "size": size_name(stage.size),
                "fixed_l1": round(error, 6),
                "sample": name,
            }
        )
        return error

    def checkpoint() -> None:
        assert trainer.G is not None
        _save_atomic(trainer.state(), state_path)
        # NVIDIA's checkpoint format: the plain state_dict of the network on the CPU.
        _save_atomic(_cpu_state(trainer.G), out_dir / "latest_net_G.pth")
        _save_atomic(_cpu_state(trainer.D), out_dir / "latest_net_D.pth")

    if trainer.step == 0:
        trainer.prepare(stages[0], 1)
        fixed_l1 = sample(stages[0])  # the untrained generator: the baseline of fixed_l1
    started = time.perf_counter()
    window_start, window_steps = time.perf_counter(), 0
    while trainer.step < last:
        step = trainer.step + 1
        stage = trainer.stage_of(step)
        trainer.prepare(stage, step)
        data = loader(stage)
        indices = batch_indices(step, settings["batch_size"], data.pairs.count, settings["seed"])
        losses = trainer.train_step(*data.batch(indices))
        trainer.step = step
        window_steps += 1
        if step % settings["log_every"] == 0 or step == stage.last_step:
            seconds = (time.perf_counter() - window_start) / window_steps
            record = {
                "step": step,
                "stage": stage.index,
                "generator": stage.generator,
                "size": size_name(stage.size),
                **losses,
                "seconds_per_step": round(seconds, 4),
            }
            loss_log.write(record)
            log.info("step %d/%d %s", step, trainer.total_steps, record)
            window_start, window_steps = time.perf_counter(), 0
        if step % settings["sample_every"] == 0 or step == stage.last_step or step == last:
            fixed_l1 = sample(stage)
        if step % settings["checkpoint_every"] == 0 or step == stage.last_step or step == last:
            checkpoint()
    if trainer.G is not None and not state_path.is_file():
        checkpoint()
    elif trainer.G is not None:
        # A rerun after the last step (say, with other log settings) trains nothing, but
        # Snakemake removed the outputs before it started: write the networks again.
        _save_atomic(_cpu_state(trainer.G), out_dir / "latest_net_G.pth")
        _save_atomic(_cpu_state(trainer.D), out_dir / "latest_net_D.pth")
    stage = trainer.stage_of(trainer.step)
    summary = {
        "presenter": settings["presenter"],
        "step": trainer.step,
        "total_steps": trainer.total_steps,
        "finished": trainer.step >= trainer.total_steps,
        "generator": trainer.generator_kind,
        # How to build the generator that loads latest_net_G.pth (NVIDIA's option names).
        "netG": {
            "input_nc": IMAGE_CHANNELS,
            "output_nc": IMAGE_CHANNELS,
            "ngf": settings["ngf"] if trainer.generator_kind == "global" else settings["ngf"] // 2,
            "n_downsample_global": settings["n_downsample_global"],
            "n_blocks_global": settings["n_blocks_global"],
            "n_local_enhancers": 1 if trainer.generator_kind == "local" else 0,
            "n_blocks_local": settings["n_blocks_local"],
        },
        "size": list(stage.size),
        # The part of the training video's frames the model saw at that size (x, y, w, h).
        "box": manifest.get("boxes", {}).get(size_name(stage.size)),
        "video_frame_size": manifest.get("frame_size"),
        "pairs": manifest.get("pairs"),
        "frames_without_face": manifest.get("frames_without_face"),
        "fixed_l1": None if fixed_l1 is None else round(fixed_l1, 6),
        "device": str(device),
        "seconds": round(time.perf_counter() - started, 1),
    }
    log.info("training at step %d of %d: %s", trainer.step, trainer.total_steps, summary)
    return summary


def train_presenter(
    *, video: str, checkpoint: str, summary: str, training: dict, ffmpeg: str, presenter: str
) -> dict:
    """Rule train_presenter: train ``presenter``'s model on ``video`` (see ``train``)."""
    from storyreel.steps import write_json

    settings = parse_settings(training)
    if settings["presenter"] != presenter:
        raise TrainingError(
            f"training.presenter is {settings['presenter']!r}, not {presenter!r}: set "
            f"training.presenter and training.video to train {presenter!r}"
        )
    out_dir = Path(checkpoint).parent
    result = train(settings, out_dir, video=video, ffmpeg=ffmpeg)
    if Path(checkpoint) != out_dir / "latest_net_G.pth":
        raise TrainingError(f"{checkpoint}: the checkpoint must be named latest_net_G.pth")
    write_json(summary, result)
    return result
