"""``noise``: per-channel noise power spectrum and noise spatial covariance, for later spectral stages.

Driven by the IMCRA tracker (:mod:`voxd_noise.tracker`), which needs no noise-only lead-in and keeps
following the noise during long speech: a rise of the level is taken up within about two minimum
search windows (``window_s``; 2.2 s for +10 dB with the default), a fall at once. With ``vad: true``
the frames an earlier VAD marks as noise (side value ``speech`` false) raise the tracker's a priori
speech absence to ``1 - speech_prob`` (at most 0.9), so noise-like bins of those frames are averaged in
at the full rate (``update_s``): a level change in a speech pause is followed within ~0.2 s instead of
~2 s. Bins with strong local speech evidence stay out even then, because a causal VAD confirms speech
late and marks the first frames of every onset as noise.

Provides, every frame (new arrays, never modified afterwards):

- ``noise.psd``: float32 ``(channels, bins)``, noise power per bin in |X|^2 units of the chain's STFT
  (the expected periodogram of the noise alone through the same analysis window);
- ``noise.cov``: complex64 ``(bins, channels, channels)``, noise spatial covariance ``E[n n^H]`` per bin,
  same units, Hermitian. Updated like ``noise.psd`` with the speech presence averaged over the
  channels, so its diagonal follows ``noise.psd`` closely but not exactly. Averaging that favours quiet
  frames lowers the coherence of partly coherent noise a little (measured: 0.42 for a true 0.50; on
  VAD noise frames 0.50). For one channel it is ``noise.psd`` itself, shaped ``(bins, 1, 1)``;
- ``noise.spp``: float32 ``(channels, bins)``, the tracker's speech presence probability (0..1).

The spectra pass through unchanged. :meth:`NoiseEstimator.reset` forgets everything (the next frame
starts the estimate afresh).
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from voxd.frame import AudioFormat, Domain, Frame
from voxd.side import NOISE_COV as COV
from voxd.side import NOISE_PSD as PSD
from voxd.side import NOISE_SPP as SPP
from voxd.side import SPEECH, SPEECH_PROB
from voxd.stage import FormatError, Stage, StageContext, StageParams
from voxd_noise.tracker import Imcra


class NoiseParams(StageParams):
    vad: bool = Field(True, description="use an earlier VAD's side values 'speech' (required) and "
                                        "'speech_prob': its noise frames are averaged in at once; "
                                        "false: the tracker alone")
    update_s: float = Field(0.049, gt=0, le=10, description="time constant of the recursive noise average "
                                                            "where speech is absent (s)")
    smooth_s: float = Field(0.076, gt=0, le=10, description="time constant of the smoothed periodogram "
                                                            "whose minimum is tracked (s)")
    window_s: float = Field(1.0, ge=0.1, le=10, description="minimum search window (s): a rise of the "
                                                            "noise level during continuous speech is "
                                                            "taken up after about two of these")


class NoiseEstimator(Stage[NoiseParams]):
    """Noise PSD and spatial covariance estimation (IMCRA, optionally VAD-assisted)."""

    kind = "noise"
    domain = Domain.SPECTRAL
    provides = (PSD, COV, SPP)

    @classmethod
    def required_keys(cls, params: NoiseParams) -> tuple[str, ...]:
        return (SPEECH,) if params.vad else ()

    def negotiate(self, fmt: AudioFormat) -> AudioFormat:
        if fmt.bins < 3:
            raise FormatError(f"needs at least 3 frequency bins, got {fmt.bins}")
        return fmt

    def open(self, ctx: StageContext) -> None:
        fmt = self.input_format
        self._channels, bins = fmt.channels, fmt.bins
        p = self.params
        self._tracker = Imcra(fmt.channels, bins, fmt.frame_s, smooth_s=p.smooth_s, window_s=p.window_s,
                              update_s=p.update_s)
        self._cov = np.zeros((bins, fmt.channels, fmt.channels), np.complex64)
        self._power = np.zeros((fmt.channels, bins), np.float32)
        self._tmp = np.zeros((fmt.channels, bins), np.float32)

    def process(self, frame: Frame) -> Frame:
        spec = frame.spec
        assert spec is not None
        power, tmp = self._power, self._tmp
        np.multiply(spec.real, spec.real, out=power)
        np.multiply(spec.imag, spec.imag, out=tmp)
        power += tmp
        absence = None
        if self.params.vad and not frame.side.get(SPEECH, True):
            absence = 1.0 - float(frame.side.get(SPEECH_PROB, 0.0))
        tr = self._tracker
        tr.update(power, absence)
        if self._channels == 1:
            cov = tr.psd[0].astype(np.complex64).reshape(-1, 1, 1)
        else:
            cov = self._update_cov(spec)
        return frame.with_side(**{PSD: tr.psd.copy(), COV: cov, SPP: tr.spp.copy()})

    def _update_cov(self, spec: np.ndarray) -> np.ndarray:
        """``R = keep R + (1 - keep) gain y y^H`` per bin with the channel-mean weights; a copy of ``R``.

        Written as ``R = o + keep (R - o)`` with ``o = gain y y^H``: fewer passes over ``(bins, C, C)``.
        """
        tr = self._tracker
        keep = np.mean(tr.keep, axis=0)[:, None, None]  # (bins, 1, 1)
        y = spec.T  # (bins, channels)
        yc = y.conj()
        if tr.gain != 1.0:
            yc *= tr.gain
        outer = y[:, :, None] * yc[:, None, :]  # (bins, C, C)
        cov = self._cov
        cov -= outer
        cov *= keep
        cov += outer
        return cov.copy()

    def reset(self) -> None:
        self._tracker.reset()
        self._cov[:] = 0.0
