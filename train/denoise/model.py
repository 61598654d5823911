"""The v2 streaming denoiser: a causal GTCRN/DeepFilterNet-style network on voxd's shared STFT.

Signal conventions (identical to ``voxd/stft.py``): 16 kHz, periodic sqrt-Hann analysis window of 320
samples (20 ms), hop 160 (10 ms), 161 bins of 50 Hz. Frame ``t`` is the rfft of the newest 320 samples
after ``160 * (t + 1)`` input samples. The network sees only the current and past frames (no
look-ahead): algorithmic latency = the 20 ms window; the chain's delay is window - hop = 10 ms.

Per 10 ms frame (``B`` batch, ``T`` frames, ``C`` channels, ``U = lin_bins + erb_bands`` units):

1. **Compressed input**: ``X_c = X |X|^(c-1)`` with ``c = 0.3`` (power-law compression keeps the
   40 dB of input levels within a 4:1 range); three channels per bin: ``|X|^c``, Re, Im of ``X_c``, and
   three more per auxiliary input spectrum (``aux``; the residual-echo suppressor of ``train/echo`` sees
   the echo canceller's echo estimate and the aligned reference this way; only ``X`` is enhanced).
2. **Bands**: the ``lin_bins`` lowest bins (0 .. 3.15 kHz with 64) stay linear, the rest are averaged
   into ``erb_bands`` ERB-spaced bands (one matmul, 161 -> U).
3. **Subband feature extraction**: each unit is stacked with its two neighbours (3 -> 9 channels).
4. **Encoder**: two frequency-strided convs (U -> U/2 -> U/4), then two causal depthwise-separable
   temporal convs (kernel 3 over time, dilations 1 and 2: 60 ms of context), residual.
5. **Frequency-mixing + grouped GRU blocks** (x ``dp_blocks``): within the frame, one matrix mixes the
   U/4 units and one the channels (each a single matmul: cheaper in onnxruntime than a GRU stepping
   across frequency); over time, a GRU per unit whose weights are shared by all units ("grouped" across
   frequency: few parameters, a state per unit), then linear, LayerNorm and a residual add.
6. **Decoder**: two transposed convs (U/4 -> U/2 -> U) with additive skips from the encoder; outputs
   per unit one gain (sigmoid) and ``2 * df_order`` deep-filter coefficients.
7. **Output**: gains are interpolated to the 161 bins and applied (``G X``); the lowest ``lin_bins``
   bins are then replaced by a causal deep filter over the current and ``df_order - 1`` past frames of
   ``G X`` (coefficients = identity on the current tap + a bounded learnt correction).

The recurrent and history state is one flat float32 vector per stream (:meth:`Denoiser.state_size`);
zeros are the initial state (``reset`` is ``state[:] = 0``). :meth:`Denoiser.forward` takes any number of
frames plus a state and returns the enhanced frames, the applied per-bin gain and the new state, so
whole-utterance inference (``T`` frames, zero state) and hop-by-hop inference (``T = 1`` repeatedly)
compute the same thing (tested to 1e-4 in ``check_onnx.py`` and ``test_model.py``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as fn

RATE = 16000
N_FFT = 320
HOP = 160
N_BINS = N_FFT // 2 + 1


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of :class:`Denoiser` (stored in checkpoints and the ONNX metadata)."""

    lin_bins: int = 64  # bins kept linear (0 .. 3.15 kHz); also the deep-filter bins
    erb_bands: int = 24  # ERB-spaced bands above lin_bins
    channels: int = 32  # C
    dp_blocks: int = 2  # frequency-mixing + GRU blocks
    df_order: int = 3  # deep-filter taps: current + 2 past frames (no look-ahead)
    compress: float = 0.3  # power-law exponent of the input features
    aux: int = 0  # input spectra beside the enhanced one (echo suppressor: echo estimate, reference)

    def to_dict(self) -> dict[str, float]:
        """Plain-dict form for JSON/metadata."""
        return asdict(self)

    @property
    def units(self) -> int:
        """Frequency units after banding, U."""
        return self.lin_bins + self.erb_bands


# ---------------------------------------------------------------------------------------------- STFT
def sqrt_hann(n: int = N_FFT) -> Tensor:
    """Periodic sqrt-Hann window, float32 (n,) — the same window as ``voxd.stft.sqrt_hann``."""
    return torch.hann_window(n, periodic=True, dtype=torch.float64).sqrt().float()


def stft(x: Tensor) -> Tensor:
    """voxd-convention STFT of ``x`` (B, L), L a multiple of 160 -> complex (B, L/160, 161)."""
    xp = fn.pad(x, (N_FFT - HOP, 0))
    frames = xp.unfold(-1, N_FFT, HOP)  # (B, T, 320)
    return torch.fft.rfft(frames * sqrt_hann().to(x.device), dim=-1)


def istft(spec: Tensor, length: int) -> Tensor:
    """Weighted overlap-add inverse of :func:`stft` with the 10 ms delay removed.

    ``spec`` complex (B, T, 161) -> (B, length). Samples from ``length - 160`` on are only half covered
    by synthesis windows (losses leave them out).
    """
    b, t, _ = spec.shape
    frames = torch.fft.irfft(spec, n=N_FFT, dim=-1) * sqrt_hann().to(spec.device)  # (B, T, 320)
    first, second = frames[..., :HOP], frames[..., HOP:]
    out = fn.pad(first, (0, 0, 0, 1)) + fn.pad(second, (0, 0, 1, 0))  # (B, T + 1, 160)
    return out.reshape(b, (t + 1) * HOP)[:, HOP:][:, :length]


def band_matrices(lin_bins: int, erb_bands: int) -> tuple[np.ndarray, np.ndarray]:
    """Analysis (161, U) and synthesis (U, 161) matrices of the linear + ERB banding.

    Columns ``0 .. lin_bins-1`` of the analysis are the identity; each ERB column averages its bins
    (rectangular bands, edges equally spaced on the ERB-rate scale from ``lin_bins`` to bin 160, at least
    one bin each). The synthesis is the identity on the linear bins and interpolates band values
    linearly between band centres (each bin's weights sum to 1, so a constant gain stays constant).
    """
    def erb(f: np.ndarray) -> np.ndarray:
        return 21.4 * np.log10(1.0 + 0.00437 * f)

    def inv_erb(e: np.ndarray) -> np.ndarray:
        return (10 ** (e / 21.4) - 1.0) / 0.00437

    hz = RATE / N_FFT
    edges_hz = inv_erb(np.linspace(erb(np.array(lin_bins * hz)), erb(np.array(RATE / 2 + hz / 2)),
                                   erb_bands + 1))  # fmt: skip
    edges = np.round(edges_hz / hz).astype(int)
    edges[0] = lin_bins
    edges[-1] = N_BINS
    for k in range(1, erb_bands + 1):  # at least one bin per band
        edges[k] = max(edges[k], edges[k - 1] + 1)
    assert edges[-1] == N_BINS, edges
    u = lin_bins + erb_bands
    an = np.zeros((N_BINS, u))
    an[np.arange(lin_bins), np.arange(lin_bins)] = 1.0
    centres = list(np.arange(lin_bins, dtype=np.float64))
    for k in range(erb_bands):
        a, b = edges[k], edges[k + 1]
        an[a:b, lin_bins + k] = 1.0 / (b - a)
        centres.append((a + b - 1) / 2)
    c = np.array(centres)
    syn = np.zeros((u, N_BINS))
    for f in range(N_BINS):
        if f < lin_bins:
            syn[f, f] = 1.0
            continue
        j = int(np.searchsorted(c, f, side="right")) - 1  # last centre <= f
        if j >= u - 1:
            syn[u - 1, f] = 1.0
            continue
        w = (f - c[j]) / (c[j + 1] - c[j])
        syn[j, f] += 1.0 - w
        syn[j + 1, f] += w
    return an.astype(np.float32), syn.astype(np.float32)


# ---------------------------------------------------------------------------------------------- blocks
class TemporalBlock(nn.Module):
    """Causal depthwise conv over (time 3 taps dilated, frequency 3) + pointwise + BN + PReLU, residual.

    Works on (B, C, T, F); the ``2 * dilation`` past frames come from / go to the caller's state.
    """

    def __init__(self, ch: int, dilation: int) -> None:
        super().__init__()
        self.hist = 2 * dilation
        self.dw = nn.Conv2d(ch, ch, (3, 3), padding=(0, 1), dilation=(dilation, 1), groups=ch, bias=False)
        self.pw = nn.Conv2d(ch, ch, 1, bias=False)
        self.bn = nn.BatchNorm2d(ch)
        self.act = nn.LeakyReLU(0.1)

    def forward(self, x: Tensor, past: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` (B, C, T, F), ``past`` (B, C, hist, F) -> (B, C, T, F), new past (B, C, hist, F)."""
        xx = torch.cat([past, x], dim=2)
        y = self.act(self.bn(self.pw(self.dw(xx))))
        return x + y, xx[:, :, -self.hist :]


class MixGRU(nn.Module):
    """Frequency mixing within the frame, then a GRU over time per frequency unit.

    Frequency mixing: LayerNorm, one (U', U') matrix across units (shared by all channels), PReLU, one
    (C, C) matrix across channels, residual (one matmul each instead of a GRU stepping across
    frequency: a single op in onnxruntime). Time: a GRU(C, C) whose weights are shared by every unit
    ("grouped" across frequency) while each unit keeps its own hidden state; then linear, LayerNorm,
    residual.
    """

    def __init__(self, ch: int, units: int) -> None:
        super().__init__()
        self.ln_f = nn.LayerNorm(ch)
        self.fmix = nn.Parameter(torch.eye(units) + 0.01 * torch.randn(units, units))
        self.fmix_b = nn.Parameter(torch.zeros(units, 1))
        self.act = nn.LeakyReLU(0.1)
        self.cmix = nn.Linear(ch, ch)
        self.gru = nn.GRU(ch, ch, batch_first=True)
        self.fc = nn.Linear(ch, ch)
        self.ln_t = nn.LayerNorm(ch)

    def forward(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` (B, T, U', C), ``h`` (B, U', C) GRU state -> (B, T, U', C), new ``h`` (B, U', C)."""
        b, t, f, c = x.shape
        y = self.fmix @ self.ln_f(x) + self.fmix_b  # (U', U') @ (B, T, U', C): mixes units
        x = x + self.cmix(self.act(y))
        z, h_new = self.gru(x.transpose(1, 2).reshape(b * f, t, c), h.reshape(1, b * f, c))
        y = self.ln_t(self.fc(z)).reshape(b, f, t, c).transpose(1, 2)
        return x + y, h_new.reshape(b, f, c)


# ---------------------------------------------------------------------------------------------- model
class Denoiser(nn.Module):
    """Causal streaming denoiser; see the module docstring for the design."""

    def __init__(self, cfg: ModelConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or ModelConfig()
        self.cfg = cfg
        c, u = cfg.channels, cfg.units
        assert u % 4 == 0, "units must be divisible by 4 (two stride-2 convs)"
        an, syn = band_matrices(cfg.lin_bins, cfg.erb_bands)
        self.register_buffer("band_an", torch.from_numpy(an), persistent=False)
        self.register_buffer("band_syn", torch.from_numpy(syn), persistent=False)
        # subband feature extraction as a fixed conv: unit f gets channels of f-1, f, f+1
        n_feat = 3 * (1 + cfg.aux)  # |X|^c, Re, Im per input spectrum
        sfe = torch.zeros(3 * n_feat, n_feat, 1, 3)
        for ch in range(n_feat):
            for k in range(3):
                sfe[ch * 3 + k, ch, 0, k] = 1.0
        self.register_buffer("sfe_w", sfe, persistent=False)
        ident = torch.zeros(1, cfg.df_order, 1, 1)
        ident[0, 0] = 1.0
        self.register_buffer("df_ident", ident, persistent=False)

        # the input is zero-padded by 3 units each side once, then SFE and enc1 run without padding:
        # SFE (3 taps) followed by enc1 (5 taps, stride 2) is then exactly one 7-tap strided conv, which
        # the export folds into a single op
        self.enc1 = nn.Sequential(nn.Conv2d(3 * n_feat, c, (1, 5), stride=(1, 2)), nn.BatchNorm2d(c),
                                  nn.LeakyReLU(0.1))  # fmt: skip
        self.enc2 = nn.Sequential(nn.Conv2d(c, c, (1, 5), stride=(1, 2), padding=(0, 2), groups=2),
                                  nn.BatchNorm2d(c), nn.LeakyReLU(0.1))  # fmt: skip
        self.enc_t = nn.ModuleList([TemporalBlock(c, 1), TemporalBlock(c, 2)])
        self.dp = nn.ModuleList([MixGRU(c, u // 4) for _ in range(cfg.dp_blocks)])
        self.dec2 = nn.Sequential(nn.ConvTranspose2d(c, c, (1, 4), stride=(1, 2), padding=(0, 1), groups=2),
                                  nn.BatchNorm2d(c), nn.LeakyReLU(0.1))  # fmt: skip
        n_out = 1 + 2 * cfg.df_order
        self.dec1 = nn.ConvTranspose2d(c, n_out, (1, 4), stride=(1, 2), padding=(0, 1))
        with torch.no_grad():  # start as "pass-through": gain ~0.9, deep filter = identity
            self.dec1.weight.mul_(0.1)
            self.dec1.bias.zero_()
            self.dec1.bias[0] = 2.0

    # ---- state layout -------------------------------------------------------------------------------
    def state_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """Named parts of the flat state vector, in order, each shape per stream."""
        cfg = self.cfg
        c, f4 = cfg.channels, cfg.units // 4
        parts: list[tuple[str, tuple[int, ...]]] = []
        for i, blk in enumerate(self.enc_t):
            parts.append((f"enc_t{i}", (c, blk.hist, f4)))
        for i in range(cfg.dp_blocks):
            parts.append((f"dp{i}", (f4, c)))
        parts.append(("df", (cfg.df_order - 1, 2, cfg.lin_bins)))  # past masked low bins, re/im
        return parts

    @property
    def state_size(self) -> int:
        """Length of the flat per-stream state vector."""
        return sum(math.prod(s) for _, s in self.state_shapes())

    def initial_state(self, batch: int = 1) -> Tensor:
        """Zero state (B, state_size): the state at stream start."""
        return torch.zeros(batch, self.state_size)

    # ---- forward ------------------------------------------------------------------------------------
    def forward(self, spec: Tensor, state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Enhance ``T`` frames.

        Args:
            spec: noisy spectra, float32 (B, T, 161, 2 + 2 aux) (real, imaginary; voxd STFT scale): the
                spectrum to enhance, then the ``aux`` auxiliary ones (seen, never output).
            state: float32 (B, state_size); zeros at stream start.
        Returns:
            enhanced spectra (B, T, 161, 2); the per-bin magnitude gain actually applied,
            ``|enh| / |spec|`` clipped to [0, 1], (B, T, 161); the state after the last frame
            (B, state_size).
        """
        cfg = self.cfg
        b, t = spec.shape[0], spec.shape[1]
        lb, order = cfg.lin_bins, cfg.df_order
        sizes = [math.prod(s) for _, s in self.state_shapes()]
        parts = list(torch.split(state, sizes, dim=1))
        st = {n: p.reshape(b, *s) for (n, s), p in zip(self.state_shapes(), parts, strict=True)}

        feats: list[Tensor] = []
        for k in range(1 + cfg.aux):
            re_k, im_k = spec[..., 2 * k], spec[..., 2 * k + 1]
            mag = torch.sqrt(re_k * re_k + im_k * im_k + 1e-12)  # (B, T, F)
            scale = mag ** (cfg.compress - 1.0)
            feats += [mag * scale, re_k * scale, im_k * scale]
        feat = torch.stack(feats, dim=1) @ self.band_an  # (B, 3 (1 + aux), T, U)
        x = fn.conv2d(fn.pad(feat, (3, 3)), self.sfe_w)  # (B, 9 (1 + aux), T, U + 4)
        re, im = spec[..., 0], spec[..., 1]
        spec = spec[..., :2]  # what is enhanced

        e1 = self.enc1(x)  # (B, C, T, U/2)
        e2 = self.enc2(e1)  # (B, C, T, U/4)
        new: dict[str, Tensor] = {}
        y = e2
        for i, blk in enumerate(self.enc_t):
            y, new[f"enc_t{i}"] = blk(y, st[f"enc_t{i}"])
        z = y.permute(0, 2, 3, 1)  # (B, T, U/4, C)
        for i, blk in enumerate(self.dp):
            z, new[f"dp{i}"] = blk(z, st[f"dp{i}"])
        y = z.permute(0, 3, 1, 2)  # (B, C, T, U/4)
        d2 = self.dec2(y + e2)  # (B, C, T, U/2)
        out = self.dec1(d2 + e1)  # (B, 1 + 2 order, T, U)

        gain = torch.sigmoid(out[:, 0]) @ self.band_syn  # (B, T, F)
        masked = spec * gain.unsqueeze(-1)  # (B, T, F, 2)
        coef = torch.tanh(out[:, 1:, :, :lb]).reshape(b, order, 2, t, lb)
        c_re = coef[:, :, 0] + self.df_ident  # (B, order, T, lb)
        c_im = coef[:, :, 1]
        m_low = masked[:, :, :lb].transpose(2, 3)  # (B, T, 2, lb)
        past = torch.cat([st["df"], m_low], dim=1)  # (B, order - 1 + T, 2, lb)
        # tap i multiplies the frame i hops back: stack the shifted views (B, order, T, 2, lb)
        taps = torch.stack([past[:, order - 1 - i : order - 1 - i + t] for i in range(order)], dim=1)
        y_re = (c_re * taps[:, :, :, 0] - c_im * taps[:, :, :, 1]).sum(1)  # (B, T, lb)
        y_im = (c_re * taps[:, :, :, 1] + c_im * taps[:, :, :, 0]).sum(1)
        enh = torch.cat([torch.stack([y_re, y_im], dim=-1), masked[:, :, lb:]], dim=2)  # (B, T, F, 2)
        new["df"] = past[:, -(order - 1) :]

        # |enh| / |spec| without the feature epsilon, so that digital silence reports a gain of 0
        with torch.no_grad():
            e_abs = torch.sqrt(enh[..., 0] ** 2 + enh[..., 1] ** 2)
            applied = torch.clamp(e_abs / (torch.sqrt(re * re + im * im) + 1e-9), 0.0, 1.0)
        new_state = torch.cat([new[n].reshape(b, -1) for n, _ in self.state_shapes()], dim=1)
        return enh, applied, new_state

    def enhance(self, noisy: Tensor) -> Tensor:
        """Whole-utterance convenience: time signals (B, L) -> enhanced (B, L), no delay."""
        spec = torch.view_as_real(stft(noisy)).contiguous()
        y, _, _ = self(spec, self.initial_state(noisy.shape[0]).to(noisy.device))
        return istft(torch.view_as_complex(y.contiguous()), noisy.shape[-1])


def count_params(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_macs_per_frame(model: Denoiser) -> int:
    """Multiply-accumulates per 10 ms frame (matmuls, convs, GRUs; elementwise ops excluded)."""
    cfg = model.cfg
    c, u, lb, o = cfg.channels, cfg.units, cfg.lin_bins, cfg.df_order
    u2, u4 = u // 2, u // 4
    macs = 3 * (1 + cfg.aux) * N_BINS * u  # banding
    macs += 9 * (1 + cfg.aux) * c * 5 * u2 + c * (c // 2) * 5 * u4  # encoder convs
    macs += 2 * u4 * c * (9 + c)  # 2 temporal blocks
    # per block: unit mixing, channel mixing, GRU (3 gates, input + hidden), output linear
    macs += cfg.dp_blocks * (u4 * u4 * c + u4 * c * c + u4 * 6 * c * c + u4 * c * c)
    macs += c * (c // 2) * 4 * u2 + c * (1 + 2 * o) * 4 * u  # decoder
    macs += u * N_BINS + 4 * o * lb * 2  # gain interpolation + deep filter
    return macs
