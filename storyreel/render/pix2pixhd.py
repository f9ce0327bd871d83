"""pix2pixHD presenter renderer: a generator trained on the presenter paints every frame.

Each frame's landmarks become a face sketch (``storyreel.pix2pixhd.sketch``) at the generator's
training ``size`` of the frame's ``cover_box`` (its largest centred part with the aspect of
``size``: the part training showed the model, the whole frame when the aspects agree); the
generator turns a batch of sketches into images, which are scaled back into that box of the
presenter frame. Frames have the presenter's size, as the warp backend's do; outside the box
(only when the aspects differ) the portrait shows unchanged.

The generator is a pix2pixHD ``GlobalGenerator`` or ``LocalEnhancer`` checkpoint
(``latest_net_G.pth``, a local path or ``gs://``), recognised from its keys.

Inference runs under ``torch.inference_mode`` in batches of ``batch_size`` frames: on CUDA with
autocast in bf16 or fp16 and channels-last tensors, on the CPU in fp32. torch is imported here
only, when this backend is chosen (config ``render.backend: pix2pixhd``).

Config ``render.pix2pixhd``: ``checkpoint`` (required), ``size`` ([width, height] or null: the
presenter size rounded to the generator's multiple), ``batch_size``, ``precision``
(auto | fp32 | fp16 | bf16), ``device`` (auto | cpu | cuda | cuda:N), ``max_checkpoint_bytes``
and ``gpu_model`` (read by the workflow, not here).
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from storyreel.pix2pixhd.sketch import cover_box, draw_face_sketches, to_network_input
from storyreel.render.base import N_LANDMARKS, RenderBackend, as_landmarks

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
DEFAULT_BATCH_SIZE = 8


class Pix2PixHDBackend(RenderBackend):
    """Frames painted by a pix2pixHD generator from face sketches."""

    def __init__(
        self,
        presenter: np.ndarray,
        reference_points,
        *,
        checkpoint: str | None = None,
        size=None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        precision: str = "auto",
        device: str = "auto",
        max_checkpoint_bytes: int | None = None,
        gpu_model: str | None = None,  # the render rule's GPU resource: nothing to do here
        **options,
    ) -> None:
        super().__init__(presenter, reference_points, **options)
        if not checkpoint:
            raise ValueError(
                "render backend pix2pixhd needs a generator checkpoint "
                "(config key render.pix2pixhd.checkpoint: a path or gs:// URI)"
            )
        if precision not in PRECISIONS:
            raise ValueError(
                f"render.pix2pixhd.precision: {precision!r} is not one of {', '.join(PRECISIONS)}"
            )
        if int(batch_size) < 1:
            raise ValueError(f"render.pix2pixhd.batch_size: must be at least 1, got {batch_size}")
        self.checkpoint = str(checkpoint)
        self.requested_size = None if size is None else tuple(int(value) for value in size)
        if self.requested_size is not None and len(self.requested_size) != 2:
            raise ValueError(f"render.pix2pixhd.size: expected [width, height], got {size!r}")
        self.batch_size = int(batch_size)
        self.requested_precision = precision
        self.requested_device = device
        self.max_checkpoint_bytes = max_checkpoint_bytes

    def prepare(self) -> None:
        import torch

        from storyreel.pix2pixhd.checkpoints import DEFAULT_MAX_CHECKPOINT_BYTES, load_generator

        loaded = load_generator(
            self.checkpoint, max_bytes=self.max_checkpoint_bytes or DEFAULT_MAX_CHECKPOINT_BYTES
        )
        if loaded.options["input_nc"] != 3 or loaded.options["output_nc"] != 3:
            raise ValueError(
                f"pix2pixHD checkpoint {self.checkpoint}: the generator maps "
                f"{loaded.options['input_nc']} to {loaded.options['output_nc']} channels; the "
                "presenter renderer needs a 3-channel sketch (label_nc 0) to an RGB frame"
            )
        multiple = loaded.size_multiple
        self.size = self.requested_size or _rounded_size(self.width, self.height, multiple)
        if any(side % multiple or side < multiple for side in self.size):
            raise ValueError(
                f"render.pix2pixhd.size {list(self.size)}: width and height must be positive "
                f"multiples of {multiple} for this {loaded.kind} generator ({self.checkpoint})"
            )
        self.device = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu")
            if self.requested_device == "auto"
            else self.requested_device
        )
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"render.pix2pixhd.device {self.requested_device}: no CUDA device is visible "
                f"(torch {torch.__version__}); use auto or cpu"
            )
        self.box = cover_box((self.width, self.height), self.size)
        self.autocast_dtype = _autocast_dtype(torch, self.device, self.requested_precision)
        generator = loaded.generator.to(self.device)
        if self.device.type == "cuda":
            generator = generator.to(memory_format=torch.channels_last)
            # Every batch has the same shape: let cuDNN pick its fastest convolutions once.
            torch.backends.cudnn.benchmark = True
        self.generator = generator.eval()
        self._torch = torch
        log.info(
            "pix2pixhd: %s generator %s from %s, sketches %dx%d, batch %d, %s on %s",
            loaded.kind,
            loaded.options,
            self.checkpoint,
            *self.size,
            self.batch_size,
            self.autocast_dtype or "fp32",
            self.device,
        )

    def render(self, points: np.ndarray) -> np.ndarray:
        return self.render_batch(as_landmarks(points, label="frame points")[None])[0]

    def render_batch(self, frames: np.ndarray) -> np.ndarray:
        """(N, height, width, 3) uint8 frames for (N, 68, 2) landmarks, in batches of batch_size."""
        frames = np.asarray(frames, dtype=np.float64)
        if frames.ndim != 3 or frames.shape[1:] != (N_LANDMARKS, 2):
            raise ValueError(f"frame points: expected (N, 68, 2), got {frames.shape}")
        out = np.empty((len(frames), self.height, self.width, 3), dtype=np.uint8)
        x, y, box_w, box_h = self.box
        for start in range(0, len(frames), self.batch_size):
            chunk = frames[start : start + self.batch_size]
            painted = self._generate(chunk)
            for k, image in enumerate(painted):
                if (box_w, box_h) != (self.width, self.height):
                    out[start + k] = self.presenter
                out[start + k, y : y + box_h, x : x + box_w] = _resized(image, box_w, box_h)
        return out

    def _generate(self, frames: np.ndarray) -> np.ndarray:
        torch = self._torch
        sketches = draw_face_sketches(frames, self.size, box=self.box)
        batch = torch.from_numpy(to_network_input(sketches)).to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if self.autocast_dtype is None:
                output = self.generator(batch)
            else:
                with torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype):
                    output = self.generator(batch)
            # To uint8 RGB where the output is (a quarter of float32's bytes to copy back), with
            # the rounding of sketch.from_network_output.
            pixels = ((output.float() + 1.0) * 127.5 + 0.5).clamp_(0, 255).to(torch.uint8)
            return pixels.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def _resized(image: np.ndarray, width: int, height: int) -> np.ndarray:
    if image.shape[:2] == (height, width):
        return image
    shrinking = image.shape[0] > height or image.shape[1] > width
    return cv2.resize(
        image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    )


def _rounded_size(width: int, height: int, multiple: int) -> tuple[int, int]:
    """The nearest multiples of ``multiple`` (at least one multiple) to the frame's sides."""
    return tuple(max(multiple, int(round(side / multiple)) * multiple) for side in (width, height))


def _autocast_dtype(torch, device, precision: str):
    """The autocast dtype for ``precision`` on ``device``; None means plain fp32."""
    if device.type != "cuda":
        if precision in ("fp16", "bf16"):
            log.warning(
                "pix2pixhd: precision %s is for CUDA; running fp32 on %s", precision, device
            )
        return None
    if precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16
