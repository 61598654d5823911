"""Speech quality metrics against a clean reference: SNR, segmental SNR, SI-SDR, PESQ-WB, STOI.

Every function takes the clean reference and the signal under test as 1-D float arrays of samples
(full scale +-1.0, any float dtype; they are computed in float64) at the same rate, time-aligned
(delay compensation is the caller's job). Lengths must match unless ``mismatch="trim"`` is given, which
cuts both to the shorter one; a silent difference in length would otherwise shift every frame.

``snr``, ``segmental_snr`` and ``si_sdr`` are plain numpy; :func:`score` gives the four that ``voxd eval``
reports (its scorer, shared with the benchmarks). ``pesq_wb`` and ``stoi`` use the ``pesq``
(ITU-T P.862.2) and ``pystoi`` packages, the optional extra ``metrics`` (``pip install 'voxd[metrics]'``),
imported only when called; without them they raise :class:`MissingExtraError` naming the extra.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import soxr

from voxd.errors import EX_UNAVAILABLE, VoxdError

Mismatch = Literal["error", "trim"]
SEGSNR_RANGE_DB = (-10.0, 35.0)  # the usual clamp: silence and near-perfect frames do not dominate the mean
PESQ_RATE = 16000  # PESQ-WB is defined at 16 kHz only
EPS = 1e-20  # energy added to both sides of a ratio so that all-zero frames stay finite


class MissingExtraError(ImportError):
    """A metric needs a package from an optional extra that is not installed."""


def _pair(clean: np.ndarray, test: np.ndarray, mismatch: Mismatch) -> tuple[np.ndarray, np.ndarray]:
    """Both signals as float64 1-D arrays of one length (see the module doc for ``mismatch``)."""
    c = np.asarray(clean, np.float64)
    t = np.asarray(test, np.float64)
    if c.ndim != 1 or t.ndim != 1:
        raise ValueError(f"expected 1-D signals, got shapes {c.shape} and {t.shape}")
    if c.size != t.size:
        if mismatch != "trim":
            raise ValueError(f"length mismatch: clean has {c.size} samples, test {t.size} "
                             f"(pass mismatch='trim' to compare the first {min(c.size, t.size)})")
        n = min(c.size, t.size)
        c, t = c[:n], t[:n]
    if c.size == 0:
        raise ValueError("empty signals")
    return c, t


def snr(clean: np.ndarray, test: np.ndarray, *, mismatch: Mismatch = "error") -> float:
    """Signal-to-noise ratio in dB: ``10 log10(sum clean^2 / sum (test - clean)^2)``.

    ``inf`` when ``test`` equals ``clean``; not scale-invariant (a gain change counts as noise).
    """
    c, t = _pair(clean, test, mismatch)
    err = float(np.sum((t - c) ** 2))
    sig = float(np.sum(c**2))
    if err == 0.0:
        return float("inf")
    return 10.0 * np.log10(sig / err) if sig > 0 else float("-inf")


def segmental_snr(clean: np.ndarray, test: np.ndarray, rate: int, *, frame_s: float = 0.03,
                  hop_s: float = 0.015, clamp_db: tuple[float, float] = SEGSNR_RANGE_DB,
                  mismatch: Mismatch = "error") -> float:
    """Mean over frames of the per-frame SNR in dB, each clamped to ``clamp_db`` (default [-10, 35]).

    Frames of ``frame_s`` seconds (rectangular) every ``hop_s`` seconds at ``rate`` Hz; a trailing
    partial frame is dropped (signals shorter than one frame are one frame). Frame SNR is
    ``10 log10((sum clean^2 + EPS) / (sum (test - clean)^2 + EPS))``, so a frame where both are
    digital silence counts as 0 dB and an exact frame as the upper clamp.
    """
    c, t = _pair(clean, test, mismatch)
    n = max(1, round(frame_s * rate))
    hop = max(1, round(hop_s * rate))
    if c.size < n:
        n = c.size
    starts = np.arange(0, c.size - n + 1, hop)
    idx = starts[:, None] + np.arange(n)[None, :]  # (frames, n)
    sig = np.sum(c[idx] ** 2, axis=1)
    err = np.sum((t[idx] - c[idx]) ** 2, axis=1)
    frame_db = 10.0 * np.log10((sig + EPS) / (err + EPS))
    return float(np.mean(np.clip(frame_db, *clamp_db)))


def si_sdr(clean: np.ndarray, test: np.ndarray, *, mismatch: Mismatch = "error") -> float:
    """Scale-invariant signal-to-distortion ratio in dB (Le Roux et al. 2019).

    Both signals are made zero-mean; ``target = (<test, clean> / <clean, clean>) clean``,
    ``SI-SDR = 10 log10(|target|^2 / |test - target|^2)``. A scaled copy of ``clean`` scores ``inf``
    (or very high, from rounding); ``clean`` plus independent noise at ``x`` dB SNR scores about ``x``.
    """
    c, t = _pair(clean, test, mismatch)
    c = c - c.mean()
    t = t - t.mean()
    cc = float(np.dot(c, c))
    if cc == 0.0:
        raise ValueError("the clean reference is constant: SI-SDR is undefined")
    target = (float(np.dot(t, c)) / cc) * c
    err = float(np.sum((t - target) ** 2))
    tt = float(np.dot(target, target))
    if err == 0.0:
        return float("inf")
    return 10.0 * np.log10(tt / err) if tt > 0 else float("-inf")


def pesq_wb(clean: np.ndarray, test: np.ndarray, rate: int = 16000, *,
            mismatch: Mismatch = "error") -> float:
    """Wide-band PESQ (ITU-T P.862.2) MOS-LQO, about 1.04 (bad) to 4.64 (identical); ``rate`` must be 16000.

    Needs the ``pesq`` package (extra ``metrics``). Raises ``ValueError`` at other rates, and the
    package's ``NoUtterancesError`` when it finds no speech in ``clean``.
    """
    if rate != 16000:
        raise ValueError(f"pesq_wb needs 16000 Hz signals, got {rate} Hz (resample first)")
    c, t = _pair(clean, test, mismatch)
    try:
        from pesq import pesq
    except ImportError as exc:
        raise MissingExtraError("pesq_wb needs the 'pesq' package from the optional extra 'metrics': "
                                "pip install 'voxd[metrics]'") from exc
    return float(pesq(rate, c.astype(np.float32), t.astype(np.float32), "wb"))


def stoi(clean: np.ndarray, test: np.ndarray, rate: int, *, extended: bool = False,
         mismatch: Mismatch = "error") -> float:
    """Short-time objective intelligibility (Taal et al. 2011), 0..1; ``extended`` for ESTOI.

    Any ``rate`` (``pystoi`` resamples to 10 kHz internally). Needs the ``pystoi`` package (extra
    ``metrics``).
    """
    c, t = _pair(clean, test, mismatch)
    try:
        from pystoi import stoi as _stoi
    except ImportError as exc:
        raise MissingExtraError("stoi needs the 'pystoi' package from the optional extra 'metrics': "
                                "pip install 'voxd[metrics]'") from exc
    return float(_stoi(c, t, rate, extended=extended))


def resample_hq(x: np.ndarray, rate: int, to: int) -> np.ndarray:
    """1-D ``x`` from ``rate`` to ``to`` Hz (soxr HQ, delay-compensated); unchanged when equal."""
    if rate == to:
        return x
    return np.asarray(soxr.resample(x.astype(np.float32), rate, to, quality="HQ"), np.float32)


def score(clean: np.ndarray, test: np.ndarray, rate: int) -> dict[str, float]:
    """SNR, SI-SDR (dB), PESQ-WB, STOI of ``test`` against ``clean`` (1-D, aligned, same ``rate``);
    lengths are trimmed to the shorter one; a metric that cannot be computed (PESQ finds no speech) is
    NaN."""
    n = min(clean.size, test.size)
    c, t = clean[:n], test[:n]
    out = {"snr": snr(c, t), "si_sdr": si_sdr(c, t)}
    try:
        out["pesq"] = pesq_wb(resample_hq(c, rate, PESQ_RATE), resample_hq(t, rate, PESQ_RATE), PESQ_RATE,
                              mismatch="trim")
    except MissingExtraError as exc:
        raise VoxdError(str(exc), EX_UNAVAILABLE) from None
    except Exception:  # pesq's NoUtterancesError and friends: one metric missing, not a failed run
        out["pesq"] = math.nan
    try:
        out["stoi"] = stoi(c, t, rate)
    except MissingExtraError as exc:
        raise VoxdError(str(exc), EX_UNAVAILABLE) from None
    return out
