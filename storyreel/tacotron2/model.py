"""Tacotron 2: characters (or ARPAbet) to an 80-band mel spectrogram.

Built from the architecture of Shen et al. 2018 ("Natural TTS Synthesis by Conditioning WaveNet
on Mel Spectrogram Predictions") with the module names and tensor layouts of NVIDIA's released
PyTorch checkpoints, so those load with ``strict=True``:

- a symbol embedding, three 5-wide convolutions with batch norm, one bidirectional LSTM;
- an autoregressive decoder: a two-layer pre-net (dropout on at inference too, as trained), an
  attention LSTM, location-sensitive attention (previous and cumulative weights through a
  31-wide convolution), a decoder LSTM, a linear mel projection and a stop-gate;
- a five-layer convolutional post-net that adds a residual to the decoder's mels.

Linear and convolution layers are wrapped (``linear_layer`` / ``conv``) because the released
state_dicts carry those names.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812


@dataclass(frozen=True)
class Tacotron2Config:
    """Hyperparameters; the defaults are those of the released LJSpeech models."""

    n_symbols: int = 148
    symbols_embedding_dim: int = 512
    encoder_n_convolutions: int = 3
    encoder_kernel_size: int = 5
    encoder_embedding_dim: int = 512
    n_mel_channels: int = 80
    n_frames_per_step: int = 1
    attention_rnn_dim: int = 1024
    decoder_rnn_dim: int = 1024
    prenet_dim: int = 256
    attention_dim: int = 128
    attention_location_n_filters: int = 32
    attention_location_kernel_size: int = 31
    postnet_embedding_dim: int = 512
    postnet_kernel_size: int = 5
    postnet_n_convolutions: int = 5
    p_attention_dropout: float = 0.1
    p_decoder_dropout: float = 0.1
    max_decoder_steps: int = 1000
    gate_threshold: float = 0.5


class LinearNorm(nn.Module):
    """nn.Linear under the name ``linear_layer``, Xavier-initialised for its activation."""

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True, gain: str = "linear"):
        super().__init__()
        self.linear_layer = nn.Linear(in_dim, out_dim, bias=bias)
        nn.init.xavier_uniform_(self.linear_layer.weight, gain=nn.init.calculate_gain(gain))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_layer(x)


class ConvNorm(nn.Module):
    """nn.Conv1d under the name ``conv``, "same" padding for odd kernels."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        bias: bool = True,
        gain: str = "linear",
    ):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel size must be odd, not {kernel_size}")
        self.conv = nn.Conv1d(
            in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias
        )
        nn.init.xavier_uniform_(self.conv.weight, gain=nn.init.calculate_gain(gain))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _conv_bn(in_channels: int, out_channels: int, kernel_size: int, gain: str) -> nn.Sequential:
    # Index 0: the convolution, index 1: its batch norm (the released key names).
    return nn.Sequential(
        ConvNorm(in_channels, out_channels, kernel_size, gain=gain),
        nn.BatchNorm1d(out_channels),
    )


class Encoder(nn.Module):
    def __init__(self, config: Tacotron2Config):
        super().__init__()
        dim = config.encoder_embedding_dim
        self.convolutions = nn.ModuleList(
            _conv_bn(dim, dim, config.encoder_kernel_size, "relu")
            for _ in range(config.encoder_n_convolutions)
        )
        self.lstm = nn.LSTM(dim, dim // 2, num_layers=1, batch_first=True, bidirectional=True)

    def forward(self, embedded: torch.Tensor) -> torch.Tensor:
        """[batch, dim, symbols] -> [batch, symbols, dim] (one utterance, no padding)."""
        x = embedded
        for convolution in self.convolutions:
            x = F.dropout(F.relu(convolution(x)), 0.5, self.training)
        self.lstm.flatten_parameters()
        outputs, _ = self.lstm(x.transpose(1, 2))
        return outputs


class Prenet(nn.Module):
    """Two bias-free ReLU layers with dropout that stays on at inference: Tacotron 2 was
    trained that way, and without it the decoder's output degrades."""

    def __init__(self, in_dim: int, sizes: list[int]):
        super().__init__()
        in_sizes = [in_dim, *sizes[:-1]]
        self.layers = nn.ModuleList(
            LinearNorm(n_in, n_out, bias=False) for n_in, n_out in zip(in_sizes, sizes, strict=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = F.dropout(F.relu(layer(x)), p=0.5, training=True)
        return x


class LocationLayer(nn.Module):
    """Previous and cumulative attention weights -> attention-dim features per symbol."""

    def __init__(self, n_filters: int, kernel_size: int, attention_dim: int):
        super().__init__()
        self.location_conv = ConvNorm(2, n_filters, kernel_size, bias=False)
        self.location_dense = LinearNorm(n_filters, attention_dim, bias=False, gain="tanh")

    def forward(self, weights_cat: torch.Tensor) -> torch.Tensor:
        return self.location_dense(self.location_conv(weights_cat).transpose(1, 2))


class Attention(nn.Module):
    """Location-sensitive additive attention."""

    def __init__(self, config: Tacotron2Config):
        super().__init__()
        dim = config.attention_dim
        self.query_layer = LinearNorm(config.attention_rnn_dim, dim, bias=False, gain="tanh")
        self.memory_layer = LinearNorm(config.encoder_embedding_dim, dim, bias=False, gain="tanh")
        self.v = LinearNorm(dim, 1, bias=False)
        self.location_layer = LocationLayer(
            config.attention_location_n_filters, config.attention_location_kernel_size, dim
        )

    def forward(
        self,
        query: torch.Tensor,
        memory: torch.Tensor,
        processed_memory: torch.Tensor,
        weights_cat: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """query [B, rnn], memory [B, T, enc], processed_memory [B, T, att], weights_cat
        [B, 2, T] -> (context [B, enc], weights [B, T])."""
        energies = self.v(
            torch.tanh(
                self.query_layer(query).unsqueeze(1)
                + self.location_layer(weights_cat)
                + processed_memory
            )
        ).squeeze(-1)
        weights = F.softmax(energies, dim=1)
        context = torch.bmm(weights.unsqueeze(1), memory).squeeze(1)
        return context, weights


@dataclass
class DecoderOutput:
    mels: torch.Tensor  # [B, n_mel, steps]
    gates: torch.Tensor  # [B, steps]
    alignments: torch.Tensor  # [B, steps, symbols]
    reached_max_steps: bool


class Decoder(nn.Module):
    def __init__(self, config: Tacotron2Config):
        super().__init__()
        self.config = config
        frame_dim = config.n_mel_channels * config.n_frames_per_step
        self.prenet = Prenet(frame_dim, [config.prenet_dim, config.prenet_dim])
        self.attention_rnn = nn.LSTMCell(
            config.prenet_dim + config.encoder_embedding_dim, config.attention_rnn_dim
        )
        self.attention_layer = Attention(config)
        self.decoder_rnn = nn.LSTMCell(
            config.attention_rnn_dim + config.encoder_embedding_dim, config.decoder_rnn_dim
        )
        projection_in = config.decoder_rnn_dim + config.encoder_embedding_dim
        self.linear_projection = LinearNorm(projection_in, frame_dim)
        self.gate_layer = LinearNorm(projection_in, 1, gain="sigmoid")

    @torch.no_grad()
    def infer(
        self, memory: torch.Tensor, max_decoder_steps: int, gate_threshold: float
    ) -> DecoderOutput:
        """Decode until the stop-gate fires (sigmoid > threshold) or ``max_decoder_steps``."""
        config = self.config
        batch, symbols, _ = memory.shape
        zeros = memory.new_zeros
        frame = zeros(batch, config.n_mel_channels * config.n_frames_per_step)
        attention_h = zeros(batch, config.attention_rnn_dim)
        attention_c = zeros(batch, config.attention_rnn_dim)
        decoder_h = zeros(batch, config.decoder_rnn_dim)
        decoder_c = zeros(batch, config.decoder_rnn_dim)
        weights = zeros(batch, symbols)
        weights_cum = zeros(batch, symbols)
        context = zeros(batch, config.encoder_embedding_dim)
        processed_memory = self.attention_layer.memory_layer(memory)

        mels, gates, alignments = [], [], []
        reached_max = True
        while len(mels) < max_decoder_steps:
            prenet_out = self.prenet(frame)
            attention_h, attention_c = self.attention_rnn(
                torch.cat((prenet_out, context), dim=-1), (attention_h, attention_c)
            )
            attention_h = F.dropout(attention_h, config.p_attention_dropout, self.training)
            weights_cat = torch.stack((weights, weights_cum), dim=1)
            context, weights = self.attention_layer(
                attention_h, memory, processed_memory, weights_cat
            )
            weights_cum = weights_cum + weights
            decoder_h, decoder_c = self.decoder_rnn(
                torch.cat((attention_h, context), dim=-1), (decoder_h, decoder_c)
            )
            decoder_h = F.dropout(decoder_h, config.p_decoder_dropout, self.training)
            hidden_context = torch.cat((decoder_h, context), dim=-1)
            frame = self.linear_projection(hidden_context)
            gate = self.gate_layer(hidden_context).squeeze(-1)
            mels.append(frame)
            gates.append(gate)
            alignments.append(weights)
            if bool((torch.sigmoid(gate) > gate_threshold).all()):
                reached_max = False
                break

        # Each step emits n_frames_per_step frames side by side: [B, steps * frames, n_mel].
        mel = torch.stack(mels, dim=1).reshape(batch, -1, config.n_mel_channels)
        mel = mel.transpose(1, 2)
        return DecoderOutput(
            mels=mel,
            gates=torch.stack(gates, dim=1),
            alignments=torch.stack(alignments, dim=1),
            reached_max_steps=reached_max,
        )


class Postnet(nn.Module):
    def __init__(self, config: Tacotron2Config):
        super().__init__()
        n_mel, dim, kernel = (
            config.n_mel_channels,
            config.postnet_embedding_dim,
            config.postnet_kernel_size,
        )
        count = config.postnet_n_convolutions
        channels = [n_mel] + [dim] * (count - 1) + [n_mel]
        self.convolutions = nn.ModuleList(
            _conv_bn(channels[i], channels[i + 1], kernel, "tanh" if i < count - 1 else "linear")
            for i in range(count)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.convolutions) - 1
        for index, convolution in enumerate(self.convolutions):
            x = convolution(x)
            if index < last:
                x = torch.tanh(x)
            x = F.dropout(x, 0.5, self.training)
        return x


@dataclass
class Tacotron2Output:
    mel: torch.Tensor  # [n_mel, steps], post-net applied
    alignment: torch.Tensor  # [steps, symbols]
    gate: torch.Tensor  # [steps]
    reached_max_steps: bool

    @property
    def steps(self) -> int:
        return int(self.mel.shape[-1])


class Tacotron2(nn.Module):
    def __init__(self, config: Tacotron2Config | None = None):
        super().__init__()
        config = config or Tacotron2Config()
        self.config = config
        self.embedding = nn.Embedding(config.n_symbols, config.symbols_embedding_dim)
        # Uniform in +-sqrt(3) * sqrt(2 / (n_symbols + dim)): unit-ish variance per symbol.
        bound = (3.0**0.5) * (2.0 / (config.n_symbols + config.symbols_embedding_dim)) ** 0.5
        nn.init.uniform_(self.embedding.weight, -bound, bound)
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.postnet = Postnet(config)

    @torch.no_grad()
    def infer(
        self,
        symbol_ids: list[int] | torch.Tensor,
        max_decoder_steps: int | None = None,
        gate_threshold: float | None = None,
    ) -> Tacotron2Output:
        """Mel spectrogram of one utterance (a list of symbol ids)."""
        if len(symbol_ids) == 0:
            raise ValueError("Tacotron2.infer: no symbols to speak")
        config = self.config
        device = self.embedding.weight.device
        ids = torch.as_tensor(symbol_ids, dtype=torch.long, device=device).view(1, -1)
        memory = self.encoder(self.embedding(ids).transpose(1, 2))
        decoded = self.decoder.infer(
            memory,
            max_decoder_steps or config.max_decoder_steps,
            config.gate_threshold if gate_threshold is None else gate_threshold,
        )
        mel = decoded.mels + self.postnet(decoded.mels)
        return Tacotron2Output(
            mel=mel[0],
            alignment=decoded.alignments[0],
            gate=decoded.gates[0],
            reached_max_steps=decoded.reached_max_steps,
        )
