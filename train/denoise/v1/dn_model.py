"""The streaming denoiser: a small causal ERB-gain + deep-filter network on voxd's shared STFT.

Signal conventions (identical to ``voxd/stft.py``): 16 kHz, periodic sqrt-Hann analysis window of 320
samples (20 ms), hop 160 (10 ms), 161 bins. Frame ``t`` is the rfft of the newest 320 samples after
``160 * (t + 1)`` input samples (zeros before the stream start). The model maps each noisy spectrum to an
enhanced spectrum using only the current and past frames, so it adds no latency beyond the STFT window
(algorithmic latency 20 ms: window 20 ms; the chain's delay is window - hop = 10 ms).

Architecture (per 10 ms frame, ``B`` batch, ``T`` frames, ``F = 161`` bins):

1. Features, each normalised by an exponential running mean (time constant 1 s, part of the state):
   ``NB_BANDS`` mel-spaced triangular band powers in dB (ERB-like resolution) and the complex spectrum
   of the lowest ``DF_BINS`` bins divided by their running mean magnitude.
2. Two small conv encoders over frequency (the first layer also sees the two previous frames), their
   outputs flattened, embedded, and two GRU layers over time.
3. Band decoder (transposed convs with skip connections from the band encoder) -> one gain in [0, 1]
   per band, interpolated to all bins (linear between band centres) and applied to the noisy spectrum.
4. Deep filter: a third GRU and a linear head predict, for each of the lowest ``DF_BINS`` bins, complex
   coefficients for the current and the ``DF_ORDER - 1`` previous frames of the gain-masked spectrum
   (initialised to identity), replacing those bins with a filtered sum.

The recurrent and history state is one flat float32 vector per stream (``Denoiser.state_size``); zeros
are the initial state, so ``reset`` is ``state[:] = 0``. ``Denoiser.forward`` takes any number of frames
plus a state and returns the enhanced frames plus the new state: whole-utterance inference (``T`` frames,
zero state) and hop-by-hop inference (``T = 1`` repeatedly, threading the state) compute the same thing.
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
EMA_TAU_S = 1.0  # running-mean time constant of the feature normalisation, seconds


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of :class:`Denoiser` (stored in checkpoints and the ONNX metadata)."""

    nb_bands: int = 32  # band (ERB-like) gains
    df_bins: int = 96  # bins 0 .. df_bins-1 (0 .. 4.75 kHz) get the deep filter
    df_order: int = 3  # deep-filter taps: current + 2 past frames (no look-ahead)
    conv_ch: int = 16  # encoder/decoder channels
    hidden: int = 128  # GRU width
    gru_layers: int = 2  # GRU layers of the shared trunk

    def to_dict(self) -> dict[str, int]:
        """Plain-dict form for JSON/metadata."""
        return asdict(self)


def sqrt_hann(n: int = N_FFT) -> Tensor:
    """Periodic sqrt-Hann window, float32 (n,) — the same window as ``voxd.stft.sqrt_hann``."""
    return torch.hann_window(n, periodic=True, dtype=torch.float64).sqrt().float()


def stft(x: Tensor) -> Tensor:
    """voxd-convention STFT of time signals ``x`` (B, L), L a multiple of 160 -> complex (B, L/160, 161)."""
    xp = fn.pad(x, (N_FFT - HOP, 0))
    frames = xp.unfold(-1, N_FFT, HOP)  # (B, T, 320)
    return torch.fft.rfft(frames * sqrt_hann().to(x.device), dim=-1)


def istft(spec: Tensor, length: int) -> Tensor:
    """Weighted overlap-add inverse of :func:`stft` with the 10 ms delay removed.

    ``spec`` complex (B, T, 161) -> (B, length). The last hop of the input is only half covered by
    windows, so sample ``length - 160`` onwards is not exact (losses ignore it).
    """
    b, t, _ = spec.shape
    frames = torch.fft.irfft(spec, n=N_FFT, dim=-1) * sqrt_hann().to(spec.device)  # (B, T, 320)
    first, second = frames[..., :HOP], frames[..., HOP:]
    out = fn.pad(first, (0, 0, 0, 1)) + fn.pad(second, (0, 0, 1, 0))  # (B, T + 1, 160)
    y = out.reshape(b, (t + 1) * HOP)[:, HOP:]
    return y[:, :length]


def band_matrices(nb_bands: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Triangular mel-spaced bands over the 161 bins.

    Returns ``(analysis (161, nb), synthesis (nb, 161), centres_hz (nb,))``: ``P @ analysis`` is the mean
    power of each band (columns sum to 1), ``g @ synthesis`` interpolates band gains linearly between
    band centres (rows of the transpose sum to 1, so a constant gain stays constant). Centres run from 0
    to 8 kHz; the lowest are 1.1 bins apart, so no band is empty.
    """
    mel_max = 2595.0 * math.log10(1.0 + (RATE / 2) / 700.0)
    mel = np.linspace(0.0, mel_max, nb_bands)
    centres = 700.0 * (10 ** (mel / 2595.0) - 1.0)
    cb = centres / (RATE / N_FFT)  # centres in bins
    bins = np.arange(N_BINS, dtype=np.float64)
    hats = np.zeros((N_BINS, nb_bands))
    for k in range(nb_bands):
        left = cb[k - 1] if k > 0 else cb[k] - 1.0
        right = cb[k + 1] if k + 1 < nb_bands else cb[k] + 1.0
        up = (bins - left) / (cb[k] - left)
        down = (right - bins) / (right - cb[k])
        hats[:, k] = np.clip(np.minimum(up, down), 0.0, 1.0)
    hats[bins <= cb[0], 0] = 1.0
    hats[bins >= cb[-1], -1] = 1.0
    analysis = hats / hats.sum(axis=0, keepdims=True)
    synthesis = (hats / hats.sum(axis=1, keepdims=True)).T
    return analysis.astype(np.float32), synthesis.astype(np.float32), centres


def ema(x: Tensor, init: Tensor, alpha: float, chunk: int = 128) -> Tensor:
    """Exponential running mean over time: ``m_t = alpha m_{t-1} + (1 - alpha) x_t``, ``m_{-1} = init``.

    ``x`` (B, T, N), ``init`` (B, N) -> (B, T, N). Computed in chunks of ``chunk`` frames as a matmul
    with a lower-triangular decay matrix (fast for training); with ``T = 1`` it is the one-step update.
    """
    t = x.shape[1]
    if t == 1:
        return (alpha * init + (1.0 - alpha) * x[:, 0]).unsqueeze(1)
    outs = []
    m = init
    for a in range(0, t, chunk):
        xc = x[:, a : a + chunk]
        n = xc.shape[1]
        k = torch.arange(n, dtype=torch.float64)
        dif = k[:, None] - k[None, :]
        w = torch.where(dif >= 0, (1.0 - alpha) * alpha ** dif.clamp(min=0), torch.zeros(())).to(x.dtype)
        decay = (alpha ** (k + 1)).to(x.dtype)  # (n,)
        mc = torch.einsum("tk,bkn->btn", w, xc) + decay[None, :, None] * m[:, None, :]
        outs.append(mc)
        m = mc[:, -1]
    return torch.cat(outs, dim=1)


class CausalConvBlock(nn.Module):
    """Conv2d over (time, frequency) + BatchNorm + ReLU; time kernel 1 (no history)."""

    def __init__(self, cin: int, cout: int, fstride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, (1, 3), stride=(1, fstride), padding=(0, 1), bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, T, F) -> (B, C', T, F / stride)."""
        return fn.relu(self.bn(self.conv(x)))


class Denoiser(nn.Module):
    """Causal streaming denoiser; see the module docstring for the design."""

    def __init__(self, cfg: ModelConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or ModelConfig()
        self.cfg = cfg
        nb, ndf, c, h = cfg.nb_bands, cfg.df_bins, cfg.conv_ch, cfg.hidden
        a, s, _ = band_matrices(nb)
        self.register_buffer("band_an", torch.from_numpy(a), persistent=False)
        self.register_buffer("band_syn", torch.from_numpy(s), persistent=False)
        self.alpha = math.exp(-HOP / RATE / EMA_TAU_S)
        # initial running means (the state stores deviations from these, so zero state = initial)
        self.register_buffer("mu_init", torch.linspace(-10.0, -40.0, nb), persistent=False)
        self.register_buffer("s_init", torch.linspace(0.3, 0.03, ndf), persistent=False)
        ident = torch.zeros(cfg.df_order, 1, 1)
        ident[0] = 1.0
        self.register_buffer("df_ident", ident, persistent=False)  # tap 0 starts as identity
        self.hist = 2  # past frames seen by the first conv layers (time kernel 3)

        # band encoder: 1 x T x nb -> c x T x nb/4
        self.enc_b0 = nn.Conv2d(1, c, (self.hist + 1, 3), padding=(0, 1), bias=False)
        self.enc_b0_bn = nn.BatchNorm2d(c)
        self.enc_b1 = CausalConvBlock(c, c, 2)
        self.enc_b2 = CausalConvBlock(c, c, 2)
        # deep-filter encoder: 2 x T x ndf -> c x T x ndf/8
        self.enc_d0 = nn.Conv2d(2, c, (self.hist + 1, 3), padding=(0, 1), bias=False)
        self.enc_d0_bn = nn.BatchNorm2d(c)
        self.enc_d1 = CausalConvBlock(c, c, 2)
        self.enc_d2 = CausalConvBlock(c, c, 2)
        self.enc_d3 = CausalConvBlock(c, c, 2)
        nb4, nd8 = -(-nb // 4), -(-ndf // 8)
        self.emb = nn.Linear(c * nb4 + c * nd8, h)
        self.gru = nn.GRU(h, h, num_layers=cfg.gru_layers, batch_first=True)
        # band decoder
        self.dec_lin = nn.Linear(h, c * nb4)
        self.dec_b2 = nn.ConvTranspose2d(c, c, (1, 4), stride=(1, 2), padding=(0, 1))
        self.dec_b1 = nn.ConvTranspose2d(c, c, (1, 4), stride=(1, 2), padding=(0, 1))
        self.dec_b0 = nn.Conv2d(c, 1, (1, 3), padding=(0, 1))
        # deep-filter decoder
        self.df_gru = nn.GRU(h, h, batch_first=True)
        self.df_out = nn.Linear(h, ndf * cfg.df_order * 2)
        self.df_skip = nn.Conv2d(c, cfg.df_order * 2, (1, 1))
        nn.init.zeros_(self.df_out.weight)
        nn.init.zeros_(self.df_out.bias)
        nn.init.zeros_(self.df_skip.weight)
        nn.init.zeros_(self.df_skip.bias)
        self._nb4, self._nd8 = nb4, nd8

    # ---- state layout -------------------------------------------------------------------------------
    def state_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """Named parts of the flat state vector, in order, each shape per stream."""
        cfg = self.cfg
        return [
            ("mu", (cfg.nb_bands,)),  # band-power running mean, dB, minus mu_init
            ("s", (cfg.df_bins,)),  # low-bin magnitude running mean, minus s_init
            ("band_hist", (self.hist, cfg.nb_bands)),  # previous normalised band features
            ("df_hist", (2, self.hist, cfg.df_bins)),  # previous normalised complex features
            ("gru", (cfg.gru_layers, cfg.hidden)),
            ("df_gru", (1, cfg.hidden)),
            ("spec_hist", (cfg.df_order - 1, cfg.df_bins, 2)),  # previous masked low-bin spectra
        ]

    @property
    def state_size(self) -> int:
        """Length of the flat per-stream state vector."""
        return sum(math.prod(s) for _, s in self.state_shapes())

    def initial_state(self, batch: int = 1) -> Tensor:
        """Zero state (B, state_size) — the state at stream start."""
        return torch.zeros(batch, self.state_size)

    def _unpack(self, state: Tensor) -> dict[str, Tensor]:
        sizes = [math.prod(s) for _, s in self.state_shapes()]
        parts = torch.split(state, sizes, dim=1)
        b = state.shape[0]
        return {n: p.reshape(b, *s) for (n, s), p in zip(self.state_shapes(), parts, strict=True)}

    @staticmethod
    def _pack(parts: list[Tensor]) -> Tensor:
        return torch.cat([p.reshape(p.shape[0], -1) for p in parts], dim=1)

    # ---- forward ------------------------------------------------------------------------------------
    def forward(self, spec: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """Enhance ``T`` frames.

        Args:
            spec: noisy spectra, float32 (B, T, 161, 2) (real, imaginary; voxd STFT scale).
            state: float32 (B, state_size); zeros at stream start.
        Returns:
            enhanced spectra (B, T, 161, 2) and the state after the last frame (B, state_size).
        """
        cfg = self.cfg
        st = self._unpack(state)
        b, t = spec.shape[0], spec.shape[1]
        re, im = spec[..., 0], spec[..., 1]
        power = re * re + im * im  # (B, T, F)

        # features with running-mean normalisation (no gradient needed: inputs only)
        band_db = 10.0 * torch.log10(torch.clamp(power @ self.band_an, min=1e-10))  # (B, T, nb)
        mag_low = torch.sqrt(power[..., : cfg.df_bins] + 1e-12)  # (B, T, ndf)
        mu_seq = ema(band_db, st["mu"] + self.mu_init, self.alpha)
        s_seq = ema(mag_low, st["s"] + self.s_init, self.alpha)
        mu, s = mu_seq[:, -1], s_seq[:, -1]
        f_band = ((band_db - mu_seq) / 40.0).unsqueeze(1)  # (B, 1, T, nb)
        low = spec[:, :, : cfg.df_bins, :]  # (B, T, ndf, 2)
        f_df = (low / s_seq.unsqueeze(-1)).permute(0, 3, 1, 2)  # (B, 2, T, ndf)

        # encoders (first layers see `hist` previous frames from the state)
        xb = torch.cat([st["band_hist"].unsqueeze(1), f_band], dim=2)
        xd = torch.cat([st["df_hist"], f_df], dim=2)
        new_band_hist = xb[:, 0, -self.hist :]
        new_df_hist = xd[:, :, -self.hist :]
        e0 = fn.relu(self.enc_b0_bn(self.enc_b0(xb)))  # (B, c, T, nb)
        e1 = self.enc_b1(e0)  # nb/2
        e2 = self.enc_b2(e1)  # nb/4
        d0 = fn.relu(self.enc_d0_bn(self.enc_d0(xd)))  # (B, c, T, ndf)
        d3 = self.enc_d3(self.enc_d2(self.enc_d1(d0)))  # ndf/8
        flat = torch.cat(
            [e2.permute(0, 2, 1, 3).reshape(b, t, -1), d3.permute(0, 2, 1, 3).reshape(b, t, -1)], dim=-1
        )
        emb = fn.relu(self.emb(flat))
        z, h_new = self.gru(emb, st["gru"].transpose(0, 1).contiguous())  # (B, T, h)

        # band gains
        u = self.dec_lin(z).reshape(b, t, cfg.conv_ch, self._nb4).permute(0, 2, 1, 3)
        u = fn.relu(self.dec_b2(fn.relu(u + e2)))  # nb/2
        u = fn.relu(self.dec_b1(u + e1))  # nb
        g_band = torch.sigmoid(self.dec_b0(u + e0))[:, 0]  # (B, T, nb)
        gain = g_band @ self.band_syn  # (B, T, F)
        masked = spec * gain.unsqueeze(-1)  # (B, T, F, 2)

        # deep filter over the low bins of the masked spectrum
        zd, hd_new = self.df_gru(z, st["df_gru"].transpose(0, 1).contiguous())
        o = cfg.df_order
        coef = self.df_out(zd).reshape(b, t, o * 2, cfg.df_bins).permute(0, 2, 1, 3)  # (B, 2o, T, ndf)
        coef = torch.tanh(coef + self.df_skip(d0))
        coef = coef.reshape(b, o, 2, t, cfg.df_bins)
        c_re = coef[:, :, 0] + self.df_ident
        c_im = coef[:, :, 1]
        m_low = masked[:, :, : cfg.df_bins]  # (B, T, ndf, 2)
        past = torch.cat([st["spec_hist"], m_low], dim=1)  # (B, o - 1 + T, ndf, 2)
        y_re = torch.zeros_like(m_low[..., 0])
        y_im = torch.zeros_like(m_low[..., 0])
        for i in range(o):  # tap i multiplies the frame i hops back
            xs = past[:, o - 1 - i : o - 1 - i + t]
            y_re = y_re + c_re[:, i] * xs[..., 0] - c_im[:, i] * xs[..., 1]
            y_im = y_im + c_re[:, i] * xs[..., 1] + c_im[:, i] * xs[..., 0]
        y_low = torch.stack([y_re, y_im], dim=-1)
        out = torch.cat([y_low, masked[:, :, cfg.df_bins :]], dim=2)

        new_state = self._pack(
            [
                mu - self.mu_init,
                s - self.s_init,
                new_band_hist,
                new_df_hist,
                h_new.transpose(0, 1),
                hd_new.transpose(0, 1),
                past[:, -(o - 1) :],
            ]
        )
        return out, new_state

    def enhance(self, noisy: Tensor) -> Tensor:
        """Whole-utterance convenience: time signals (B, L) -> enhanced time signals (B, L), no delay."""
        x = stft(noisy)
        spec = torch.view_as_real(x).contiguous()
        y, _ = self(spec, self.initial_state(noisy.shape[0]).to(noisy.device))
        return istft(torch.view_as_complex(y.contiguous()), noisy.shape[-1])


def count_macs_per_frame(model: Denoiser) -> int:
    """Multiply-accumulates per 10 ms frame (matmuls, convs, GRUs; elementwise ops excluded)."""
    cfg = model.cfg
    c, h, nb, ndf, o = cfg.conv_ch, cfg.hidden, cfg.nb_bands, cfg.df_bins, cfg.df_order
    nb2, nb4, nd2, nd4, nd8 = nb // 2, -(-nb // 4), ndf // 2, ndf // 4, -(-ndf // 8)
    macs = N_BINS * nb  # band powers
    macs += c * 3 * 3 * nb + c * c * 3 * (nb2 + nb4)  # band encoder
    macs += 2 * c * 3 * 3 * ndf + c * c * 3 * (nd2 + nd4 + nd8)  # df encoder
    macs += (c * nb4 + c * nd8) * h  # embedding
    macs += cfg.gru_layers * 3 * (h * h + h * h) + 3 * 2 * h * h  # GRUs
    macs += h * c * nb4 + c * c * 4 * (nb2 + nb) + c * 3 * nb + nb * N_BINS  # band decoder + gains
    macs += h * ndf * o * 2 + c * o * 2 * ndf + 4 * o * ndf  # deep filter
    return macs
