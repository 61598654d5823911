"""Classical single-channel noise suppressors: ``spectral_subtraction`` and ``wiener``.

Both read the noise power estimate ``noise.psd`` (float32 ``(channels, bins)``, |X|^2 units) from an
earlier ``noise`` stage, compute one real gain per channel and bin, and multiply the spectrum by it
(noisy phase kept). They work on every channel independently, vectorised over channels and bins.
A stage between ``noise`` and a suppressor that changes the channel count (a beamformer) has to
provide its own ``noise.psd`` for its output; a mismatch is a stage error.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
from pydantic import Field

from voxd.frame import Domain, Frame
from voxd.side import NOISE_PSD as PSD
from voxd.stage import Stage, StageContext, StageParams

S = TypeVar("S", bound=StageParams)

TINY = 1e-20  # keeps ratios finite on digital silence; far below 16-bit quantisation (~1e-8)


def db_to_power(db: float) -> float:
    """Power ratio of ``db`` decibels."""
    return float(10.0 ** (db / 10.0))


class _Suppressor(Stage[S]):
    """Shared plumbing: reads ``noise.psd``, checks its shape, applies ``self._gain(power, psd)``."""

    domain = Domain.SPECTRAL
    requires = (PSD,)

    def open(self, ctx: StageContext) -> None:
        fmt = self.input_format
        self._shape = (fmt.channels, fmt.bins)
        self._power = np.zeros(self._shape, np.float32)
        self._imag2 = np.zeros(self._shape, np.float32)

    def process(self, frame: Frame) -> Frame:
        spec = frame.spec
        assert spec is not None
        psd = frame.side[PSD]
        if psd.shape != self._shape:
            raise ValueError(f"'{PSD}' has shape {psd.shape}, the spectrum {self._shape}: a stage that "
                             f"changes the channel count must provide '{PSD}' for its output")
        power, imag2 = self._power, self._imag2
        np.multiply(spec.real, spec.real, out=power)
        np.multiply(spec.imag, spec.imag, out=imag2)
        power += imag2
        gain = self._gain(power, psd)
        return frame.with_spec((spec * gain).astype(np.complex64, copy=False))

    def _gain(self, power: np.ndarray, psd: np.ndarray) -> np.ndarray:
        """Real gain ``(channels, bins)`` for periodogram ``power`` and noise estimate ``psd``."""
        raise NotImplementedError


class SpectralSubtractionParams(StageParams):
    over_subtraction: float = Field(4.0, ge=1.0, le=10.0,
                                    description="alpha: multiple of the noise PSD subtracted (at 0 dB "
                                                "segment SNR when snr_dependent)")
    floor_db: float = Field(-20.0, ge=-60.0, le=0.0,
                            description="spectral floor beta, dB re the noise PSD: the output power "
                                        "never drops below beta * noise PSD")
    snr_dependent: bool = Field(True, description="alpha = over_subtraction - 0.15 * SNR_dB, the frame's "
                                                  "a posteriori SNR clamped to [-5, 20] dB (Berouti)")


class SpectralSubtraction(_Suppressor[SpectralSubtractionParams]):
    """Power spectral subtraction with over-subtraction and a spectral floor (Berouti et al. 1979).

    Per channel and bin: ``|S|^2 = P - alpha N`` where that exceeds ``beta N``, else ``beta N``, with
    ``P = |Y|^2`` and ``N`` = ``noise.psd``; the spectrum is scaled by ``sqrt(|S|^2 / P)``. With
    ``snr_dependent`` the over-subtraction factor follows each frame's SNR ``10 log10((sum P - sum N) /
    sum N)`` (per channel, clamped to [-5, 20] dB): ``alpha = over_subtraction - 3/20 SNR``, i.e. more
    subtraction in noisy frames and down to ``over_subtraction - 3`` (at least 1) in clean ones.
    A noise-only input comes out ``-floor_db`` dB quieter, minus the few bins whose periodogram exceeds
    ``alpha`` times the noise (the "musical" residue).
    """

    kind = "spectral_subtraction"

    def open(self, ctx: StageContext) -> None:
        super().open(ctx)
        self._beta = np.float32(db_to_power(self.params.floor_db))

    def _gain(self, power: np.ndarray, psd: np.ndarray) -> np.ndarray:
        p = self.params
        if p.snr_dependent:
            noise = psd.sum(axis=1, keepdims=True) + TINY
            snr_db = 10.0 * np.log10(np.maximum(power.sum(axis=1, keepdims=True) - noise, TINY) / noise)
            alpha = np.maximum(p.over_subtraction - 0.15 * np.clip(snr_db, -5.0, 20.0), 1.0)
            alpha = alpha.astype(np.float32)
        else:
            alpha = np.float32(p.over_subtraction)
        clean = np.maximum(power - alpha * psd, self._beta * psd)
        return np.sqrt(np.minimum(clean / (power + TINY), 1.0))


class WienerParams(StageParams):
    dd_alpha: float = Field(0.98, ge=0.0, lt=1.0,
                            description="decision-directed weight of the previous frame's clean-speech "
                                        "estimate in the a priori SNR (per 10 ms frame: ~0.5 s memory)")
    floor_db: float = Field(-15.0, ge=-60.0, le=0.0, description="gain floor (dB, amplitude)")


class Wiener(_Suppressor[WienerParams]):
    """Wiener gain with the decision-directed a priori SNR (Ephraim and Malah 1984), per channel.

    ``gamma = P / N`` (a posteriori SNR), ``xi = dd_alpha |A'|^2 / N' + (1 - dd_alpha) max(gamma - 1, 0)``
    where ``|A'|^2 / N' = G'^2 gamma'`` is the previous frame's clean-speech power estimate over its
    noise, ``xi >= -25 dB``; ``G = xi / (1 + xi)``, applied as ``max(G, floor)``. The floor is left out
    of the decision-directed recursion (it is a listening safeguard, not part of the estimator), so a
    noise-only input comes out about ``-floor_db`` dB quieter. :meth:`reset` forgets the previous frame.
    """

    kind = "wiener"

    XI_MIN = 10 ** (-25 / 10)

    def open(self, ctx: StageContext) -> None:
        super().open(ctx)
        self._floor = 10.0 ** (self.params.floor_db / 20.0)
        self._prev = np.zeros(self._shape, np.float32)  # G^2 gamma of the previous frame
        self._gamma, self._xi, self._tmp = (np.zeros(self._shape, np.float32) for _ in range(3))
        self._started = False

    def _gain(self, power: np.ndarray, psd: np.ndarray) -> np.ndarray:
        a = self.params.dd_alpha
        gamma, xi, tmp, prev = self._gamma, self._xi, self._tmp, self._prev
        np.add(psd, TINY, out=tmp)
        np.divide(power, tmp, out=gamma)
        np.subtract(gamma, 1.0, out=xi)
        np.maximum(xi, 0.0, out=xi)  # maximum-likelihood a priori SNR of this frame alone
        if self._started:
            xi *= 1.0 - a
            np.multiply(prev, a, out=tmp)
            xi += tmp
        self._started = True  # the first frame (no previous estimate) uses its own
        np.maximum(xi, self.XI_MIN, out=xi)
        gain = xi / (1.0 + xi)  # a new array: it is handed to the caller
        np.multiply(gain, gain, out=prev)
        prev *= gamma
        return np.maximum(gain, self._floor, out=gain)

    def reset(self) -> None:
        self._started = False
