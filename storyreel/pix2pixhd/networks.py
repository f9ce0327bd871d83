"""pix2pixHD generators and discriminators whose ``state_dict`` matches NVIDIA's release.

The module layout (attribute names, ``nn.Sequential`` indices that count parameter-free layers)
reproduces the parameter names of NVIDIA's pix2pixHD checkpoints key for key, so a
``latest_net_G.pth`` / ``latest_net_D.pth`` trained with NVIDIA's code loads with
``strict=True``. Normalisation is ``InstanceNorm2d(affine=False)``: no parameters, no buffers.

Constructors (defaults are pix2pixHD's training defaults for a 3-channel sketch input, i.e.
``label_nc 0``, ``--no_instance``):

- ``GlobalGenerator(input_nc=3, output_nc=3, ngf=64, n_downsampling=4, n_blocks=9)``:
  reflection-padded 7x7 conv, ``n_downsampling`` stride-2 convs, ``n_blocks`` ResnetBlocks at
  ``ngf * 2**n_downsampling`` channels, as many transposed convs back up, 7x7 conv, tanh.
  Input height and width must be multiples of ``2**n_downsampling``.
- ``LocalEnhancer(input_nc=3, output_nc=3, ngf=32, n_downsample_global=4, n_blocks_global=9,
  n_local_enhancers=1, n_blocks_local=3)``: a global generator of width
  ``ngf * 2**n_local_enhancers`` (without its output layers) run on the input downsampled
  ``n_local_enhancers`` times, refined by local branches at full resolution. Input sides must be
  multiples of ``2**(n_downsample_global + n_local_enhancers)``.
- ``NLayerDiscriminator(input_nc=6, ndf=64, n_layers=3, use_sigmoid=False,
  get_interm_feat=False)``: PatchGAN; ``forward`` returns a list of feature maps (all
  intermediate ones when ``get_interm_feat``, else only the final patch logits).
- ``MultiscaleDiscriminator(input_nc=6, ndf=64, n_layers=3, use_sigmoid=False, num_D=2,
  get_interm_feat=True)``: ``num_D`` PatchGANs on the input and its 2x, 4x... downsampled
  copies; ``forward`` returns one list per scale, full resolution first. ``get_interm_feat``
  (True in pix2pixHD training, which uses the feature-matching loss) names parameters
  ``scale{i}_layer{j}.*``; False names them ``layer{i}.*``. ``input_nc`` is the generator
  input channels plus the image channels (3 + 3 for a sketch).

All generators map images in [-1, 1] to [-1, 1].
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "GlobalGenerator",
    "LocalEnhancer",
    "MultiscaleDiscriminator",
    "NLayerDiscriminator",
    "ResnetBlock",
    "build_generator",
]


def _norm(channels: int) -> nn.Module:
    # pix2pixHD's "instance" norm: no affine parameters and no running statistics, hence no keys.
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


class ResnetBlock(nn.Module):
    """x + (pad, conv3x3, norm, ReLU, pad, conv3x3, norm)(x); convs at ``conv_block.1``/``.5``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3),
            _norm(dim),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3),
            _norm(dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


def _global_layers(
    input_nc: int, output_nc: int, ngf: int, n_downsampling: int, n_blocks: int
) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.ReflectionPad2d(3),
        nn.Conv2d(input_nc, ngf, kernel_size=7),
        _norm(ngf),
        nn.ReLU(True),
    ]
    for i in range(n_downsampling):
        channels = ngf * 2**i
        layers += [
            nn.Conv2d(channels, channels * 2, kernel_size=3, stride=2, padding=1),
            _norm(channels * 2),
            nn.ReLU(True),
        ]
    bottleneck = ngf * 2**n_downsampling
    layers += [ResnetBlock(bottleneck) for _ in range(n_blocks)]
    for i in range(n_downsampling):
        channels = ngf * 2 ** (n_downsampling - i)
        layers += [
            nn.ConvTranspose2d(
                channels, channels // 2, kernel_size=3, stride=2, padding=1, output_padding=1
            ),
            _norm(channels // 2),
            nn.ReLU(True),
        ]
    layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, kernel_size=7), nn.Tanh()]
    return layers


class GlobalGenerator(nn.Module):
    """pix2pixHD's coarse generator (``--netG global``); parameters under ``model.*``."""

    def __init__(
        self,
        input_nc: int = 3,
        output_nc: int = 3,
        ngf: int = 64,
        n_downsampling: int = 4,
        n_blocks: int = 9,
    ) -> None:
        super().__init__()
        self.input_nc, self.output_nc, self.ngf = input_nc, output_nc, ngf
        self.n_downsampling = n_downsampling
        self.model = nn.Sequential(
            *_global_layers(input_nc, output_nc, ngf, n_downsampling, n_blocks)
        )

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this."""
        return 2**self.n_downsampling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _downsample() -> nn.Module:
    # Halves the image for the next coarser scale; padding is not averaged in at the borders.
    return nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)


class LocalEnhancer(nn.Module):
    """pix2pixHD's coarse-to-fine generator (``--netG local``).

    Parameters: ``model.*`` (the global generator of width ``ngf * 2**n_local_enhancers``, same
    indices as ``GlobalGenerator`` minus its output pad/conv/tanh), then per enhancer ``n``
    ``model{n}_1.*`` (downsampling branch) and ``model{n}_2.*`` (ResnetBlocks, upsampling and,
    for the finest enhancer, the output conv).
    """

    def __init__(
        self,
        input_nc: int = 3,
        output_nc: int = 3,
        ngf: int = 32,
        n_downsample_global: int = 4,
        n_blocks_global: int = 9,
        n_local_enhancers: int = 1,
        n_blocks_local: int = 3,
    ) -> None:
        super().__init__()
        self.input_nc, self.output_nc, self.ngf = input_nc, output_nc, ngf
        self.n_downsample_global = n_downsample_global
        self.n_local_enhancers = n_local_enhancers
        global_layers = _global_layers(
            input_nc, output_nc, ngf * 2**n_local_enhancers, n_downsample_global, n_blocks_global
        )
        # The local branches produce the output; the global one stops at its last features.
        self.model = nn.Sequential(*global_layers[:-3])
        for n in range(1, n_local_enhancers + 1):
            width = ngf * 2 ** (n_local_enhancers - n)
            down = [
                nn.ReflectionPad2d(3),
                nn.Conv2d(input_nc, width, kernel_size=7),
                _norm(width),
                nn.ReLU(True),
                nn.Conv2d(width, width * 2, kernel_size=3, stride=2, padding=1),
                _norm(width * 2),
                nn.ReLU(True),
            ]
            up: list[nn.Module] = [ResnetBlock(width * 2) for _ in range(n_blocks_local)]
            up += [
                nn.ConvTranspose2d(
                    width * 2, width, kernel_size=3, stride=2, padding=1, output_padding=1
                ),
                _norm(width),
                nn.ReLU(True),
            ]
            if n == n_local_enhancers:
                up += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, kernel_size=7), nn.Tanh()]
            setattr(self, f"model{n}_1", nn.Sequential(*down))
            setattr(self, f"model{n}_2", nn.Sequential(*up))
        self.downsample = _downsample()

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this."""
        return 2 ** (self.n_downsample_global + self.n_local_enhancers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pyramid = [x]
        for _ in range(self.n_local_enhancers):
            pyramid.append(self.downsample(pyramid[-1]))
        features = self.model(pyramid[-1])
        for n in range(1, self.n_local_enhancers + 1):
            branch_input = pyramid[self.n_local_enhancers - n]
            down = getattr(self, f"model{n}_1")
            up = getattr(self, f"model{n}_2")
            features = up(down(branch_input) + features)
        return features


def _patchgan_blocks(
    input_nc: int, ndf: int, n_layers: int, use_sigmoid: bool
) -> list[list[nn.Module]]:
    # Kernel 4 with padding 2 (ceil((4 - 1) / 2)), as in pix2pixHD: each block grows the map by 1.
    kernel, pad = 4, 2
    blocks = [[nn.Conv2d(input_nc, ndf, kernel, stride=2, padding=pad), nn.LeakyReLU(0.2, True)]]
    channels = ndf
    for n in range(1, n_layers + 1):
        previous, channels = channels, min(channels * 2, 512)
        stride = 2 if n < n_layers else 1
        blocks.append(
            [
                nn.Conv2d(previous, channels, kernel, stride=stride, padding=pad),
                _norm(channels),
                nn.LeakyReLU(0.2, True),
            ]
        )
    last: list[nn.Module] = [nn.Conv2d(channels, 1, kernel, stride=1, padding=pad)]
    if use_sigmoid:
        last.append(nn.Sigmoid())
    blocks.append(last)
    return blocks


class NLayerDiscriminator(nn.Module):
    """PatchGAN discriminator; parameters under ``model.*`` or, with ``get_interm_feat``,
    ``model0.*`` .. ``model{n_layers+1}.*`` (one Sequential per block)."""

    def __init__(
        self,
        input_nc: int = 6,
        ndf: int = 64,
        n_layers: int = 3,
        use_sigmoid: bool = False,
        get_interm_feat: bool = False,
    ) -> None:
        super().__init__()
        self.get_interm_feat = get_interm_feat
        self.n_blocks = n_layers + 2
        blocks = _patchgan_blocks(input_nc, ndf, n_layers, use_sigmoid)
        if get_interm_feat:
            for j, block in enumerate(blocks):
                setattr(self, f"model{j}", nn.Sequential(*block))
        else:
            self.model = nn.Sequential(*[layer for block in blocks for layer in block])

    def block_sequentials(self) -> list[nn.Sequential]:
        """The per-block Sequentials (get_interm_feat) or the single one."""
        if self.get_interm_feat:
            return [getattr(self, f"model{j}") for j in range(self.n_blocks)]
        return [self.model]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return _run_blocks(self.block_sequentials(), x)


def _run_blocks(blocks: list[nn.Module], x: torch.Tensor) -> list[torch.Tensor]:
    outputs = []
    for block in blocks:
        x = block(x)
        outputs.append(x)
    return outputs


class MultiscaleDiscriminator(nn.Module):
    """``num_D`` PatchGANs at successively halved resolutions.

    Scale ``num_D - 1`` sees the full-resolution input, scale 0 the most downsampled one (this is
    how NVIDIA's checkpoints name them); ``forward`` returns ``[full, half, ...]``, each a list of
    feature maps whose last entry is the patch logits.
    """

    def __init__(
        self,
        input_nc: int = 6,
        ndf: int = 64,
        n_layers: int = 3,
        use_sigmoid: bool = False,
        num_D: int = 2,  # noqa: N803 - pix2pixHD's option name
        get_interm_feat: bool = True,
    ) -> None:
        super().__init__()
        self.num_D = num_D
        self.n_layers = n_layers
        self.get_interm_feat = get_interm_feat
        for i in range(num_D):
            single = NLayerDiscriminator(input_nc, ndf, n_layers, use_sigmoid, get_interm_feat)
            if get_interm_feat:
                for j, block in enumerate(single.block_sequentials()):
                    setattr(self, f"scale{i}_layer{j}", block)
            else:
                setattr(self, f"layer{i}", single.model)
        self.downsample = _downsample()

    def scale_blocks(self, i: int) -> list[nn.Module]:
        """The Sequentials of scale ``i`` in order."""
        if self.get_interm_feat:
            return [getattr(self, f"scale{i}_layer{j}") for j in range(self.n_layers + 2)]
        return [getattr(self, f"layer{i}")]

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        results = []
        for k in range(self.num_D):
            results.append(_run_blocks(self.scale_blocks(self.num_D - 1 - k), x))
            if k != self.num_D - 1:
                x = self.downsample(x)
        return results


def build_generator(kind: str, **options) -> nn.Module:
    """``GlobalGenerator`` (kind "global") or ``LocalEnhancer`` (kind "local")."""
    if kind == "global":
        return GlobalGenerator(**options)
    if kind == "local":
        return LocalEnhancer(**options)
    raise ValueError(f"unknown pix2pixHD generator {kind!r}: expected 'global' or 'local'")
