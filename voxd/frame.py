"""Frames: the unit of audio that flows through a chain.

A :class:`Frame` carries either time-domain samples, float32 of shape ``(channels, samples)``, or one
STFT frame, complex64 of shape ``(channels, bins)``, together with its stream position and the typed
side values that stages hand to later stages (speech probability, noise PSD, direction of arrival...).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np


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
    - ``side``: side values keyed by name (``speech``, ``speech_prob``, ``noise.psd``...). Scalars
      (bool, int, float, str) also travel in the wire header.

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
    """The side values that travel in the wire header: JSON scalars only (arrays stay in-process)."""
    out: dict[str, Any] = {}
    for key, value in side.items():
        if isinstance(value, bool | int | str):
            out[key] = value
        elif isinstance(value, float | np.floating):
            out[key] = round(float(value), 4)
        elif isinstance(value, np.bool_ | np.integer):
            out[key] = value.item()
    return out
