"""WaveGlow: a flow-based vocoder, mel spectrogram -> 22.05 kHz audio.

Built from the architecture of Prenger et al. 2019 ("WaveGlow: A Flow-based Generative Network
for Speech Synthesis") with the module names and tensor layouts of NVIDIA's released
checkpoints:

- ``upsample``: a transposed convolution (window 1024, stride 256) that stretches each mel
  frame over 256 samples; audio and the stretched mels are folded into groups of ``n_group``
  (8) samples, the mels giving 80 * 8 = 640 conditioning channels per group;
- 12 flows, each an invertible 1x1 convolution (``convinv.{k}.conv``, an orthogonal-initialised
  channel mixing) and an affine coupling layer whose scale and shift come from a WaveNet-like
  network ``WN.{k}`` (gated dilated convolutions conditioned on the mels) applied to half the
  channels;
- every 4 flows 2 channels leave early (straight to the latent in training; drawn from the
  prior at inference), so flows 0-3 see 8 channels, 4-7 six and 8-11 four.

Layout variants, all loadable ``strict=True`` by choosing the constructor flags:

- ``weight_norm=True``: the weight-normalised convolutions of a training checkpoint store
  ``weight_g`` [out, 1, 1] and ``weight_v`` (the legacy weight-norm naming, order bias, g, v);
  ``weight_norm=False`` is the inference view with the two folded into ``weight``;
- ``per_layer_conditioning=True``: the conditioning is 8 separate ``cond_layers.{i}`` (the older
  NVIDIA/waveglow layout, also DeepLearningExamples'); False: one fused ``cond_layer`` whose
  output rows are those 8 stacked.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812


@dataclass(frozen=True)
class WaveGlowConfig:
    """Hyperparameters; the defaults are NVIDIA/waveglow's released 256-channel model."""

    n_mel_channels: int = 80
    n_flows: int = 12
    n_group: int = 8
    n_early_every: int = 4
    n_early_size: int = 2
    n_layers: int = 8
    n_channels: int = 256
    kernel_size: int = 3
    weight_norm: bool = True
    per_layer_conditioning: bool = False

    @property
    def hop_length(self) -> int:
        return 256

    def remaining_channels(self) -> list[int]:
        """Channels each flow transforms (8, 8, 8, 8, 6, ... for the defaults)."""
        channels, remaining = [], self.n_group
        for flow in range(self.n_flows):
            if flow % self.n_early_every == 0 and flow > 0:
                remaining -= self.n_early_size
            channels.append(remaining)
        return channels


class WeightNormConv1d(nn.Conv1d):
    """Conv1d whose weight is g * v / ||v|| (norm per output channel over the other dims).

    Parameters are registered as bias, weight_g, weight_v: the names and order of a
    checkpoint trained with PyTorch's original weight-norm hook.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        weight = self.weight.detach()
        del self.weight
        self.weight_g = nn.Parameter(_norm_except_dim0(weight))
        self.weight_v = nn.Parameter(weight.clone())

    def folded_weight(self) -> torch.Tensor:
        return self.weight_v * (self.weight_g / _norm_except_dim0(self.weight_v))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.folded_weight(), self.bias)

    def without_weight_norm(self) -> nn.Conv1d:
        """A plain Conv1d with the folded weight; parameters in order bias, weight (the
        inference checkpoints' order)."""
        plain = nn.Conv1d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            bias=self.bias is not None,
        )
        del plain.weight
        with torch.no_grad():
            if self.bias is not None:
                plain.bias.copy_(self.bias)
            plain.weight = nn.Parameter(self.folded_weight().detach().clone())
        return plain.to(self.weight_v.device)


def _norm_except_dim0(weight: torch.Tensor) -> torch.Tensor:
    if weight.is_meta:  # a layout without values: skip the (slow) meta computation
        return weight.new_empty((weight.shape[0],) + (1,) * (weight.dim() - 1))
    return weight.norm(dim=tuple(range(1, weight.dim())), keepdim=True)


def _conv(weight_norm: bool, *args, **kwargs) -> nn.Conv1d:
    return WeightNormConv1d(*args, **kwargs) if weight_norm else _plain_conv(*args, **kwargs)


def _plain_conv(*args, **kwargs) -> nn.Conv1d:
    """A Conv1d registered as bias, weight, like one whose weight norm was removed."""
    conv = nn.Conv1d(*args, **kwargs)
    weight = conv.weight
    del conv.weight
    conv.weight = weight
    return conv


class Invertible1x1Conv(nn.Module):
    """Channel mixing by an invertible matrix W, stored as a bias-free 1x1 Conv1d weight."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel_size=1, bias=False)
        if self.conv.weight.is_meta:  # built for its layout only (no values to set)
            return
        matrix, _ = torch.linalg.qr(torch.randn(channels, channels))
        if torch.det(matrix) < 0:  # a rotation, so log|det W| starts at 0 with det W = +1
            matrix[:, 0] = -matrix[:, 0]
        with torch.no_grad():
            self.conv.weight.copy_(matrix.unsqueeze(-1))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z -> (W z, log|det W| summed over the batch and time steps)."""
        batch, _, steps = z.shape
        matrix = self.conv.weight.squeeze(-1)
        log_det = batch * steps * torch.linalg.slogdet(matrix.double())[1].to(z.dtype)
        return self.conv(z), log_det

    def reverse(self, z: torch.Tensor) -> torch.Tensor:
        inverse = torch.linalg.inv(self.conv.weight.squeeze(-1).double()).to(z.dtype)
        return F.conv1d(z, inverse.unsqueeze(-1))


class WN(nn.Module):
    """The coupling network: gated, dilated, mel-conditioned convolutions over half the
    channels; outputs the shift (first half) and log-scale (second half) of the other half."""

    def __init__(self, n_in_channels: int, config: WaveGlowConfig):
        super().__init__()
        if config.kernel_size % 2 != 1:
            raise ValueError(f"WN kernel size must be odd, not {config.kernel_size}")
        channels, layers, wn = config.n_channels, config.n_layers, config.weight_norm
        self.n_layers, self.n_channels = layers, channels
        self.per_layer_conditioning = config.per_layer_conditioning
        cond_in = config.n_mel_channels * config.n_group
        # Registration order gives the released key order: in_layers, res_skip_layers,
        # (cond_layers,) start, end, (cond_layer).
        self.in_layers = nn.ModuleList()
        self.res_skip_layers = nn.ModuleList()
        if self.per_layer_conditioning:
            self.cond_layers = nn.ModuleList(
                _conv(wn, cond_in, 2 * channels, 1) for _ in range(layers)
            )
        self.start = _conv(wn, n_in_channels, channels, 1)
        # end starts at zero, so every coupling layer starts as the identity.
        self.end = nn.Conv1d(channels, 2 * n_in_channels, 1)
        nn.init.zeros_(self.end.weight)
        nn.init.zeros_(self.end.bias)
        if not self.per_layer_conditioning:
            self.cond_layer = _conv(wn, cond_in, 2 * channels * layers, 1)
        for layer in range(layers):
            dilation = 2**layer
            padding = dilation * (config.kernel_size - 1) // 2
            self.in_layers.append(
                _conv(
                    wn, channels, 2 * channels, config.kernel_size, dilation=dilation,
                    padding=padding,
                )
            )  # fmt: skip
            # The last layer only feeds the skip output.
            out = 2 * channels if layer < layers - 1 else channels
            self.res_skip_layers.append(_conv(wn, channels, out, 1))

    def forward(self, audio: torch.Tensor, spect: torch.Tensor) -> torch.Tensor:
        channels = self.n_channels
        audio = self.start(audio)
        output = torch.zeros_like(audio)
        if not self.per_layer_conditioning:
            conditioning = self.cond_layer(spect)
        for layer in range(self.n_layers):
            if self.per_layer_conditioning:
                cond = self.cond_layers[layer](spect)
            else:
                offset = layer * 2 * channels
                cond = conditioning[:, offset : offset + 2 * channels]
            activation = self.in_layers[layer](audio) + cond
            gated = torch.tanh(activation[:, :channels]) * torch.sigmoid(activation[:, channels:])
            res_skip = self.res_skip_layers[layer](gated)
            if layer < self.n_layers - 1:
                audio = audio + res_skip[:, :channels]
                output = output + res_skip[:, channels:]
            else:
                output = output + res_skip
        return self.end(output)


class WaveGlow(nn.Module):
    def __init__(self, config: WaveGlowConfig | None = None):
        super().__init__()
        config = config or WaveGlowConfig()
        if config.n_group % 2 or config.n_early_every < 1:
            raise ValueError(f"invalid WaveGlow configuration: {config}")
        self.config = config
        self.upsample = nn.ConvTranspose1d(
            config.n_mel_channels, config.n_mel_channels, 1024, stride=256
        )
        remaining = config.remaining_channels()
        self.WN = nn.ModuleList(WN(channels // 2, config) for channels in remaining)  # noqa: N815
        self.convinv = nn.ModuleList(Invertible1x1Conv(channels) for channels in remaining)

    @property
    def hop_length(self) -> int:
        return self.upsample.stride[0]

    def _conditioning(self, mel: torch.Tensor) -> torch.Tensor:
        """[B, n_mel, frames] -> [B, n_mel * n_group, frames * hop / n_group].

        Conditioning channel c * n_group + g holds mel band c at sample g of the group.
        """
        group = self.config.n_group
        spect = self.upsample(mel)
        # The transposed convolution overhangs by window - stride samples: frames * hop remain.
        overhang = self.upsample.kernel_size[0] - self.upsample.stride[0]
        spect = spect[:, :, : spect.shape[2] - overhang]
        batch, bands, samples = spect.shape
        spect = spect.view(batch, bands, samples // group, group).permute(0, 2, 1, 3)
        return spect.reshape(batch, samples // group, bands * group).transpose(1, 2)

    def forward(
        self, mel: torch.Tensor, audio: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Training direction: audio [B, frames * hop] -> latent z [B, n_group, steps], with the
        per-flow log-scales and log-determinants (for the likelihood)."""
        config = self.config
        spect = self._conditioning(mel)
        batch = audio.shape[0]
        audio = audio.view(batch, -1, config.n_group).transpose(1, 2)
        early: list[torch.Tensor] = []
        log_scales: list[torch.Tensor] = []
        log_dets: list[torch.Tensor] = []
        for flow in range(config.n_flows):
            if flow % config.n_early_every == 0 and flow > 0:
                early.append(audio[:, : config.n_early_size])
                audio = audio[:, config.n_early_size :]
            audio, log_det = self.convinv[flow](audio)
            log_dets.append(log_det)
            half = audio.shape[1] // 2
            audio_0, audio_1 = audio[:, :half], audio[:, half:]
            out = self.WN[flow](audio_0, spect)
            shift, log_scale = out[:, :half], out[:, half:]
            audio_1 = torch.exp(log_scale) * audio_1 + shift
            log_scales.append(log_scale)
            audio = torch.cat((audio_0, audio_1), dim=1)
        early.append(audio)
        return torch.cat(early, dim=1), log_scales, log_dets

    @torch.no_grad()
    def infer(
        self, mel: torch.Tensor, sigma: float = 0.6, z: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Audio [B, frames * hop] for mel [B, n_mel, frames]; the latent is drawn from
        N(0, sigma^2) unless ``z`` [B, n_group, frames * hop / n_group] is given."""
        config = self.config
        spect = self._conditioning(mel)
        batch, _, steps = spect.shape
        if z is None:
            z = sigma * torch.randn(batch, config.n_group, steps, device=mel.device)
        z = z.to(mel.dtype)
        # The channels that left early, in the order they left; the rest enter last flow.
        remaining = config.remaining_channels()
        audio = z[:, config.n_group - remaining[-1] :]
        early_taken = config.n_group - remaining[-1]
        for flow in reversed(range(config.n_flows)):
            half = audio.shape[1] // 2
            audio_0, audio_1 = audio[:, :half], audio[:, half:]
            out = self.WN[flow](audio_0, spect)
            shift, log_scale = out[:, :half], out[:, half:]
            audio_1 = (audio_1 - shift) * torch.exp(-log_scale)
            audio = self.convinv[flow].reverse(torch.cat((audio_0, audio_1), dim=1))
            if flow % config.n_early_every == 0 and flow > 0:
                early_taken -= config.n_early_size
                start = early_taken
                audio = torch.cat((z[:, start : start + config.n_early_size], audio), dim=1)
        return audio.transpose(1, 2).reshape(batch, -1)

    def remove_weight_norm(self) -> WaveGlow:
        """Fold every weight-normalised convolution into a plain one (the inference view);
        a model already without weight norm is returned unchanged."""
        if not self.config.weight_norm:
            return self
        for wn in self.WN:
            wn.start = wn.start.without_weight_norm()
            for layers in (wn.in_layers, wn.res_skip_layers, getattr(wn, "cond_layers", None)):
                if layers is not None:
                    for index, layer in enumerate(layers):
                        layers[index] = layer.without_weight_norm()
            if not wn.per_layer_conditioning:
                wn.cond_layer = wn.cond_layer.without_weight_norm()
        self.config = replace(self.config, weight_norm=False)
        return self


class Denoiser(nn.Module):
    """Removes WaveGlow's constant hiss: the magnitude spectrum of what the vocoder makes of
    silence (an all-zero mel, sigma 0), scaled by ``strength``, is subtracted from the output's
    magnitude spectrum; the phase is kept."""

    def __init__(self, waveglow: WaveGlow, n_fft: int = 1024, hop_length: int = 256):
        super().__init__()
        self.n_fft, self.hop_length = n_fft, hop_length
        device = waveglow.upsample.weight.device
        silence = torch.zeros(1, waveglow.config.n_mel_channels, 88, device=device)
        bias_audio = waveglow.infer(silence, sigma=0.0)
        bias = self._stft(bias_audio).abs()[:, :, :1]  # the first frame's spectrum
        self.register_buffer("bias_spectrum", bias)

    def _stft(self, audio: torch.Tensor) -> torch.Tensor:
        window = torch.hann_window(self.n_fft, device=audio.device)
        return torch.stft(audio, self.n_fft, self.hop_length, window=window, return_complex=True)

    @torch.no_grad()
    def forward(self, audio: torch.Tensor, strength: float = 0.1) -> torch.Tensor:
        spectrum = self._stft(audio)
        magnitude = (spectrum.abs() - self.bias_spectrum * strength).clamp(min=0.0)
        cleaned = torch.polar(magnitude, spectrum.angle())
        window = torch.hann_window(self.n_fft, device=audio.device)
        return torch.istft(
            cleaned, self.n_fft, self.hop_length, window=window, length=audio.shape[-1]
        )
