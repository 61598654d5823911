"""Frames: the unit of audio that flows through a chain.

A :class:`Frame` carries either time-domain samples, float32 of shape ``(channels, samples)``, or one
STFT frame, complex64 of shape ``(channels, bins)``, together with its stream position and the typed
side values that stages hand to later stages (speech probability, noise PSD, direction of arrival...).
"""

from __future__ import annotations

import enum
import warnings
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from voxd.side import on_wire


class Domain(enum.StrEnum):
    """Which representation a frame carries."""

    TIME = "time"
    SPECTRAL = "spectral"


class Flags(enum.IntFlag):
    """Per-frame flags. ``DISCONTINUITY``: samples before this frame were lost; stages ``reset()``."""

    NONE = 0
    DISCONTINUITY = 1
    END_OF_STREAM = 2


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """What a stage consumes or produces (immutable, compared at build time).

    ``rate``: samples per second per channel (Hz); ``channels``: channel count; ``frame``: the nominal
    number of new samples per frame (the hop, in samples); ``domain``: time or spectral. In the spectral
    domain ``n_fft`` is the transform length and ``bins == n_fft // 2 + 1``.
    """

    rate: int
    channels: int
    frame: int
    domain: Domain = Domain.TIME
    n_fft: int = 0

    @property
    def bins(self) -> int:
        """Number of one-sided frequency bins (spectral domain only)."""
        return self.n_fft // 2 + 1 if self.n_fft else 0

    @property
    def frame_s(self) -> float:
        """Frame duration in seconds."""
        return self.frame / self.rate

    def describe(self) -> str:
        """A short human description, e.g. ``4 ch 16000 Hz time`` (used in build errors)."""
        base = f"{self.channels} ch {self.rate} Hz {self.domain.value}"
        return base + (f" (n_fft {self.n_fft})" if self.domain is Domain.SPECTRAL else "")


@dataclass(slots=True)
class Frame:
    """One block of audio with its position in the stream.

    - ``samples``: float32 ``(channels, n)``, C-contiguous, nominal full scale +-1.0 (time domain), or None;
    - ``spec``: complex64 ``(channels, bins)`` (spectral domain), or None;
    - ``seq``: frame counter (+1 per frame, a gap means lost frames);
    - ``pts``: index of the first sample of this frame since stream start, at the frame's rate;
    - ``t``: capture time of the first sample, Unix seconds;
    - ``flags``: :class:`Flags`;
    - ``side``: side values keyed by name (:mod:`voxd.side`: ``speech``, ``speech_prob``, ``noise.psd``...).
      Scalars (bool, int, float, str) of keys declared ``wire`` (and of undeclared keys) also travel in
      the wire header.

    Stages never mutate the frame they are given: they return a new one (``with_samples`` etc.).
    """

    samples: np.ndarray | None
    seq: int
    pts: int
    t: float
    rate: int
    flags: Flags = Flags.NONE
    spec: np.ndarray | None = None
    side: dict[str, Any] = field(default_factory=dict)

    @property
    def channels(self) -> int:
        """Channel count of whichever representation the frame carries."""
        data = self.samples if self.samples is not None else self.spec
        assert data is not None
        return int(data.shape[0])

    @property
    def n(self) -> int:
        """Number of time samples per channel (0 for a spectral frame)."""
        return 0 if self.samples is None else int(self.samples.shape[1])

    def with_samples(self, samples: np.ndarray, **side: Any) -> Frame:
        """A copy carrying new time samples (and, optionally, added side values)."""
        return replace(self, samples=samples, spec=None, side={**self.side, **side} if side else self.side)

    def with_spec(self, spec: np.ndarray, **side: Any) -> Frame:
        """A copy carrying a new spectrum (and, optionally, added side values)."""
        return replace(self, spec=spec, samples=None, side={**self.side, **side} if side else self.side)

    def with_side(self, **side: Any) -> Frame:
        """A copy with side values added or replaced."""
        return replace(self, side={**self.side, **side})


def header_side(side: dict[str, Any]) -> dict[str, Any]:
    """The side values that travel in the wire header: JSON scalars only (arrays stay in-process), and
    of the declared keys (:mod:`voxd.side`) only those declared ``wire``."""
    out: dict[str, Any] = {}
    for key, value in side.items():
        if not on_wire(key):
            continue
        if isinstance(value, bool | int | str):
            out[key] = value
        elif isinstance(value, float | np.floating):
            out[key] = round(float(value), 4)
        elif isinstance(value, np.bool_ | np.integer):
            out[key] = value.item()
    return out


#: The largest sample magnitude a chain accepts at its input: 60 dB over full scale (1.0). Audio beyond
#: it is corrupt (a float file scaled by 1e30, a broken driver), and keeping every input below it keeps
#: the stages' squared spectra and covariances far from float32 overflow (3.4e38).
SAMPLE_LIMIT = 1000.0


# The sum of squares below overflows float32 (to inf, which is the answer wanted) for values beyond
# ~1.8e19, and is NaN for inf - inf; numpy would say so on stderr. np.errstate around each call would
# cost as much as the test itself.
warnings.filterwarnings("ignore", message="(overflow|invalid value) encountered in dot",
                        category=RuntimeWarning)


def finite_within(x: np.ndarray, limit: float = SAMPLE_LIMIT) -> bool:
    """True when every value of ``x`` is finite and at most ``limit`` in magnitude (complex: both parts).

    The hot-path test: one BLAS dot product (the sum of squares, about 2 us for 4 x 160 float32), in
    which a NaN or an infinity propagates and any value beyond ``limit`` makes the sum exceed
    ``limit**2``. A very loud but valid block (sum of squares over ``limit**2`` without a single value
    over ``limit``) returns False too; callers then pay for :func:`sanitized`, which changes nothing.
    """
    v = x.reshape(-1)
    if v.dtype.kind == "c":
        v = v.view(v.real.dtype) if v.flags.c_contiguous else np.ascontiguousarray(v).view(v.real.dtype)
    return bool(np.dot(v, v) <= limit * limit)


def sanitized(x: np.ndarray, limit: float = SAMPLE_LIMIT) -> tuple[np.ndarray, bool]:
    """``x`` with every NaN, infinity and value beyond ``limit`` in magnitude (complex: either part)
    replaced by 0, as a new array, and whether anything was replaced (``x`` itself when not).

    Zero rather than a clipped value: such a sample is not a measurement (a float file scaled by 1e30,
    a broken driver), so it is treated like a lost one; a clipped 1e30 would reach the stages as a
    burst 60 dB over full scale, which an AGC's level estimate remembers for seconds.
    """
    parts = x.reshape(-1)
    parts = parts.view(parts.real.dtype) if parts.dtype.kind == "c" else parts
    with np.errstate(invalid="ignore"):
        bad = ~(np.abs(parts) <= limit)  # NaN compares False: bad too
    if not bad.any():
        return x, False
    y = np.array(x, copy=True)
    flat = y.reshape(-1)
    flat = flat.view(flat.real.dtype) if flat.dtype.kind == "c" else flat
    flat[bad] = 0.0
    return y, True
