"""``beamform``: N microphone spectra in, one beamformed spectrum out (delay-and-sum or MVDR).

Chain entry (spectral domain, after ``vad`` and ``noise``, before single-channel stages)::

    - {stage: beamform, method: mvdr, steering: rtf}          # default: data-driven steering
    - {stage: beamform, method: mvdr, steering: doa}          # far-field steering from doa_deg
    - {stage: beamform, method: delay_and_sum}                # steered by doa_deg
    - {stage: beamform, method: delay_and_sum, azimuth_deg: 90}

Methods, per frequency bin ``f`` with the ``M``-channel spectrum ``x`` ``(M,)`` and the output
``y = w^H x``:

- ``delay_and_sum``: ``w = d / M`` with the far-field steering vector ``d_m = exp(-j 2 pi f (tau_m -
  tau_ref))``, ``tau_m = -(p_m . u) / c`` for the unit vector ``u`` towards the talker (azimuth from
  ``doa_deg`` or the fixed ``azimuth_deg``, elevation ``elevation_deg``). Fractional delays are phase
  shifts; the output is phase-aligned to the reference microphone.
- ``mvdr``: ``w = R^-1 h / (h^H R^-1 h)`` with ``R`` the noise spatial covariance ``noise.cov`` of the
  ``noise`` stage (VAD-gated IMCRA) plus diagonal loading ``loading * trace(R) / M``, and ``h`` either
  the far-field ``d`` (``steering: doa``) or the relative transfer function (``steering: rtf``): the
  principal generalised eigenvector of (speech-frame covariance, noise covariance), i.e. covariance
  whitening, ``h = R_n v / (R_n v)[ref]``. The RTF includes the room's early reflections and any
  mismatch of the real array with its nominal geometry, which far-field steering cannot. The speech-
  frame covariance averages the frames the VAD marks as speech with time constant ``rtf_s``; one power
  iteration per update, warm-started from the previous vector, follows it. Until ``rtf_min_s`` of speech
  has been seen the reference microphone passes unchanged (steering from an early direction estimate
  instead cost 0.4 dB SI-SDR on dev/array). ``steering: doa`` uses ``doa_deg`` (or ``azimuth_deg``),
  and the reference microphone alone while neither is known.

Mask-driven statistics (``mask: denoise``, mvdr only): instead of whole VAD frames and the ``noise``
stage's covariance, the per-bin gain ``g`` (0..1) of an earlier ``denoise`` stage (``denoise.gain``;
the mean over the channels it ran on, typically ``{stage: denoise, channels: [0], apply: false}``: the
model on the reference mic, spectra untouched) weights every frame: ``g ** mask_power`` into the speech
covariance (time constant ``rtf_s``), ``1 - g`` into the stage's own noise covariance (``noise_s``, an
average normalised by its weights, so ``noise.psd`` for a post-filter keeps its units). A bin the
denoiser removes (music, a fan) then teaches the noise statistics while the talker speaks, and the
VAD's late onsets no longer put the first words into the noise. ``rtf_min_s`` counts frames in which
some bin has ``g >= 0.5``. ``mask: model`` does the same with ``mask.gain`` of an earlier ``mask``
stage (:mod:`voxd_array.mask`: a learned mask from every microphone, which can tell the talker from a
louder television; a denoiser's gain keeps any speech). Measured on ``dev/array`` and on the tuning set
of ``bench/arrayset.py`` in ``docs/array.md``.

Both normalise to the reference microphone: for the target, the output is what ``ref_mic`` would have
recorded without noise (distortionless), so level and timbre match that mic.

``method: mwf`` and ``gev_ban`` use the same statistics and eigenvector and differ from the MVDR only by
a real gain per bin: ``mwf`` multiplies it by ``1 - 1 / lam`` (at least ``mwf_floor_db``), ``lam = v^H
R_x v / v^H R_n v`` the principal generalised eigenvalue, i.e. one plus the output SNR of the speech
statistics: the rank-1 multichannel Wiener filter (a slow, per-bin post-filter inside the
beamformer); ``gev_ban`` is ``v`` scaled by ``sqrt(v^H R_n R_n v / M) / (v^H R_n v)`` (Warsitz and
Haeb-Umbach's blind analytic normalisation), with the reference entry's phase removed.

Robustness: the loading keeps small arrays from turning superdirective at low frequencies (which
amplifies self-noise and distorts the target under steering errors); it is raised where needed so that
the loaded covariance's condition number stays below ``max_condition`` (``cond <= (trace + load) /
load``, a bound that needs no decomposition); a bin whose weights still come out non-finite, or whose
``h^H R^-1 h`` is not positive, uses the delay-and-sum weights for that update; a non-finite input
spectrum is zeroed before it reaches the covariances.

Post-filter hook: the stage provides ``noise.psd`` ``(1, bins)`` (the residual noise power at the
output, ``w^H R_n w``) and ``noise.cov`` ``(bins, 1, 1)`` for its output, so a single-channel stage that
reads them — ``wiener``, ``spectral_subtraction`` — or the neural ``denoise`` stage can follow it
directly as the post-filter (MVDR + Wiener post-filter = the multichannel Wiener filter).

``update_every`` inverts the loaded noise covariance every k-th frame (default 1; 2 saves about 45 us
per frame for 4 mics and 100 us for 6, and cost 0.03 dB SI-SDR on dev/array); with ``steering:
rtf`` the power iteration and the weights still follow every frame through the cached inverse, with
``steering: doa`` the weights change at the refreshes. With a fixed
steering and a constant ``noise.cov`` the stage is a fixed linear filter per bin, which
``tests/test_beamform.py`` checks against a batch numpy reference.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from voxd.frame import AudioFormat, Domain, Frame
from voxd.side import DENOISE_GAIN as GAIN
from voxd.side import DOA_DEG as DOA
from voxd.side import MASK_GAIN, SPEECH
from voxd.side import NOISE_COV as COV
from voxd.side import NOISE_PSD as PSD
from voxd.stage import FormatError, Stage, StageContext, StageParams

WEIGHTS = "beamform.weights"


class BeamformParams(StageParams):
    method: Literal["delay_and_sum", "mvdr", "mwf", "gev_ban"] = Field(
        "mvdr", description="beamformer: 'mvdr' (distortionless), 'mwf' (MVDR times the per-bin Wiener "
                            "gain of its output SNR: the rank-1 multichannel Wiener filter) or 'gev_ban' "
                            "(max-SNR with blind analytic normalisation); mwf and gev_ban need steering rtf")
    steering: Literal["doa", "rtf"] = Field(
        "rtf", description="mvdr only: far-field steering from the direction ('doa') or the relative "
                           "transfer function estimated from speech and noise covariances ('rtf')")
    azimuth_deg: float | None = Field(
        None, ge=-360, le=360, description="fixed talker azimuth (deg, counter-clockwise from +x); "
                                           "null: the doa_deg side value of an earlier doa stage")
    elevation_deg: float = Field(0.0, ge=-90, le=90, description="talker elevation above the array plane "
                                                                 "(deg) for far-field steering")
    ref_mic: int = Field(0, ge=0, le=1023, description="reference microphone (channel index) the output is "
                                                       "aligned to")
    loading: float = Field(0.1, ge=0, le=10, description="mvdr: diagonal loading, fraction of trace(R)/M")
    max_condition: float = Field(1e4, gt=2, le=1e8, description="mvdr: largest condition number of the "
                                 "loaded noise covariance (more loading where needed)")
    rtf_s: float = Field(3.0, gt=0, le=60, description="rtf: time constant of the speech-frame covariance (s "
                                                       "of speech)")
    rtf_min_s: float = Field(0.3, ge=0, le=10, description="rtf: speech needed before the RTF replaces "
                                                           "far-field steering (s)")
    update_every: int = Field(1, ge=1, le=100, description="mvdr: invert the loaded noise covariance "
                                                           "every k-th frame (the RTF and weights follow "
                                                           "every frame)")
    mask: Literal["vad", "denoise", "model"] = Field(
        "vad", description="mvdr: what drives the spatial statistics: 'vad' (speech frames -> speech "
                           "covariance; noise.cov of the noise stage), 'denoise' (the per-bin gain "
                           "denoise.gain of an earlier denoise stage weights every frame into both) or "
                           "'model' (the same with mask.gain of an earlier mask stage)")
    mask_power: float = Field(3.0, ge=0.5, le=16, description="mask denoise/model: the speech covariance "
                                                              "weight is gain ** mask_power (higher: only "
                                                              "bins the mask keeps nearly whole)")
    noise_s: float = Field(3.0, gt=0, le=60, description="mask denoise/model: time constant of the "
                                                         "mask-weighted noise covariance (s)")
    mwf_floor_db: float = Field(-12.0, ge=-40, le=0, description="mwf: lowest Wiener gain (dB) of a bin")

    @model_validator(mode="after")
    def _rtf_for_eigen_methods(self) -> BeamformParams:
        if self.method in ("mwf", "gev_ban") and self.steering != "rtf":
            raise ValueError(f"method {self.method} needs steering rtf (it is built on the speech and noise "
                             f"statistics' principal eigenvector)")
        return self


class Beamformer(Stage[BeamformParams]):
    """Delay-and-sum or MVDR beamformer, N channels -> 1 (see the module docstring)."""

    kind = "beamform"
    domain = Domain.SPECTRAL
    needs_geometry = True

    @classmethod
    def required_keys(cls, params: BeamformParams) -> tuple[str, ...]:
        keys: list[str] = []
        if params.method != "delay_and_sum" and params.mask != "vad":
            keys.append(GAIN if params.mask == "denoise" else MASK_GAIN)
        elif params.method != "delay_and_sum":
            keys.append(COV)
            if params.steering == "rtf":
                keys.append(SPEECH)
        if params.azimuth_deg is None and (params.method == "delay_and_sum" or params.steering == "doa"):
            keys.append(DOA)
        return tuple(keys)

    @classmethod
    def provided_keys(cls, params: StageParams) -> tuple[str, ...]:
        return (PSD, COV)

    def negotiate(self, fmt: AudioFormat) -> AudioFormat:
        if fmt.channels < 2:
            raise FormatError(f"needs at least 2 microphones, got {fmt.channels} channel")
        if self.params.ref_mic >= fmt.channels:
            raise FormatError(f"ref_mic {self.params.ref_mic} is not one of the {fmt.channels} channels")
        return AudioFormat(fmt.rate, 1, fmt.frame, Domain.SPECTRAL, fmt.n_fft)

    # ------------------------------------------------------------------------------------------ set-up
    def open(self, ctx: StageContext) -> None:
        fmt = self.input_format
        assert ctx.positions is not None  # needs_geometry: the chain builder checked
        m, bins = fmt.channels, fmt.bins
        self._m, self._bins, self._ref = m, bins, self.params.ref_mic
        self._pos = np.asarray(ctx.positions, np.float64)
        self._c = float(getattr(ctx, "speed_of_sound", 343.0))
        self._freqs = np.arange(bins) * (fmt.rate / fmt.n_fft)  # (bins,) Hz
        self._eye = np.eye(m, dtype=np.complex128)[None]
        # speech-frame covariance: one-pole average with a time constant counted in speech frames
        self._rtf_keep = float(np.exp(-fmt.frame_s / self.params.rtf_s))
        self._rtf_min = int(np.ceil(self.params.rtf_min_s / fmt.frame_s))
        self._rtf_mode = self.params.method != "delay_and_sum" and self.params.steering == "rtf"
        self._mask_mode = self.params.method != "delay_and_sum" and self.params.mask != "vad"
        self._floor = 10.0 ** (self.params.mwf_floor_db / 20.0)
        self._mask_key = GAIN if self.params.mask == "denoise" else MASK_GAIN
        self._noise_keep = float(np.exp(-fmt.frame_s / self.params.noise_s))
        self._steer_az: float | None = None
        self._ref_steer = self._ref_only()
        self._steer_d = self._ref_steer
        self.reset()

    def reset(self) -> None:
        m, bins = self._m, self._bins
        self._rx = np.zeros((bins, m, m), np.complex128)
        self._speech_frames = 0.0  # speech seen, in frames (mask mode: the mean speech weight summed)
        self._rn = np.zeros((bins, m, m), np.complex128)  # mask mode: the weighted noise covariance
        self._rn_w = np.zeros(bins)  # ... and its weights' running sum (for an unbiased average)
        self._rx_w = np.zeros(bins)  # the speech covariance's weights' running sum (mwf's SNR)
        self._v = np.ones((bins, m, 1), np.complex128) / np.sqrt(m)  # power-iteration state
        self._w = self._ref_steer
        self._w_dir: np.ndarray | None = None
        self._psd: dict[str, np.ndarray] | None = None
        self._frame = 0
        self._r: np.ndarray | None = None  # loaded noise covariance (bins, M, M) and its inverse
        self._rinv: np.ndarray | None = None

    def _ref_only(self) -> np.ndarray:
        """Weights (bins, M) that select the reference microphone (no direction known yet)."""
        d = np.zeros((self._bins, self._m), np.complex128)
        d[:, self._ref] = 1.0
        return d

    def steering(self, azimuth_deg: float) -> np.ndarray:
        """Far-field steering vectors ``(bins, M)`` towards ``azimuth_deg``, unit gain at ``ref_mic``."""
        a, e = np.radians(azimuth_deg), np.radians(self.params.elevation_deg)
        u = np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)])
        tau = -(self._pos @ u) / self._c  # (M,) arrival time relative to the centre (s)
        tau -= tau[self._ref]
        return np.exp(-2j * np.pi * self._freqs[:, None] * tau[None, :])

    def _far_field(self, frame: Frame) -> np.ndarray:
        """The far-field steering for this frame: fixed azimuth, else doa_deg, else the reference mic."""
        az = self.params.azimuth_deg
        if az is None:
            az = frame.side.get(DOA)
        if az is None:
            return self._ref_steer
        az = float(az)
        if az != self._steer_az:  # recompute only when the direction moves
            self._steer_az, self._steer_d = az, self.steering(az)
        return self._steer_d

    # ----------------------------------------------------------------------------------------- hot path
    def process(self, frame: Frame) -> Frame:
        spec = frame.spec
        assert spec is not None
        x = spec.T  # (bins, M) view
        if not np.isfinite(spec).all():  # a broken capture must not poison the covariances
            x = np.where(np.isfinite(x), x, 0.0).astype(np.complex64)
        # rtf steering never uses the far-field vector: until the RTF is learnt the reference mic passes
        # (measured on dev/array: steering from an early, still wrong doa_deg meanwhile cost 0.4 dB)
        d = self._ref_steer if self._rtf_mode else self._far_field(frame)
        if self._mask_mode:
            self._masked_statistics(x, frame)
            # the normalised noise covariance only where it is read: refreshes and a pending psd
            need = self._frame % self.params.update_every == 0 or self._r is None or self._psd is None
            rn = self._rn / np.maximum(self._rn_w, 1e-12)[:, None, None] if need else None
        else:
            rn = frame.side.get(COV)
        if self.params.method == "delay_and_sum":
            if d is not self._w_dir:  # weights follow the direction only
                self._w_dir, self._w = d, (d if d is self._ref_steer else d / self._m)
                self._psd = None
        else:
            if self.params.steering == "rtf" and not self._mask_mode and frame.side.get(SPEECH, False):
                outer = x[:, :, None] * x.conj()[:, None, :]
                rx = self._rx
                rx -= outer
                rx *= self._rtf_keep
                rx += outer
                self._rx_w = self._rtf_keep * self._rx_w + (1.0 - self._rtf_keep)
                self._speech_frames += 1
            refresh = self._frame % self.params.update_every == 0
            if refresh or self._rtf_mode:
                self._w = self._mvdr(rn, d, refresh)
            if refresh:  # the residual noise PSD for a post-filter follows at the refreshes
                self._psd = None
        self._frame += 1
        w = self._w
        y = np.einsum("fm,fm->f", w.conj(), x)[None, :].astype(np.complex64)
        if self._psd is None:
            self._psd = self._residual(w, rn)
        return frame.with_spec(y, **self._psd)

    def _masked_statistics(self, x: np.ndarray, frame: Frame) -> None:
        """Mask mode: fold this frame's ``x`` ``(bins, M)`` into the speech and noise covariances with
        the weights ``g ** mask_power`` and ``1 - g`` of the per-bin gain ``g`` (``denoise.gain``: the
        mean over the channels the denoiser ran on; or ``mask.gain``); the noise covariance's weighted
        average is ``self._rn / self._rn_w``.

        Every frame counts, not only the VAD's speech frames: a bin the denoiser removes (music, a
        fan) teaches the noise statistics even while the talker speaks, and a bin it keeps whole teaches
        the speech statistics even in a frame the VAD calls noise (its onsets come late).
        """
        g = frame.side.get(self._mask_key)
        if g is None or np.shape(g)[-1] != self._bins:  # no gain this frame: all noise, nothing learnt
            m = np.zeros(self._bins)
        else:
            g = np.asarray(g, np.float64).reshape(-1, self._bins)
            m = np.clip(np.nan_to_num(g.mean(axis=0), nan=0.0), 0.0, 1.0)
        ws = m ** self.params.mask_power
        outer = x[:, :, None] * x.conj()[:, None, :]
        keep = self._rtf_keep
        rx = self._rx  # R <- keep R + (1 - keep) w x x^H, written R = o + keep (R - o) with o = w x x^H
        o = ws[:, None, None] * outer
        rx -= o
        rx *= keep
        rx += o
        self._rx_w = keep * self._rx_w + (1.0 - keep) * ws
        keep = self._noise_keep
        wn = 1.0 - m
        o = wn[:, None, None] * outer
        rn = self._rn
        rn -= o
        rn *= keep
        rn += o
        self._rn_w = keep * self._rn_w + (1.0 - keep) * wn
        self._speech_frames += float(m.max() >= 0.5)  # a frame with a bin the denoiser keeps: some speech

    def _mvdr(self, rn: np.ndarray | None, d: np.ndarray, refresh: bool) -> np.ndarray:
        """MVDR weights ``(bins, M)`` for noise covariance ``rn`` ``(bins, M, M)`` and far-field ``d``.

        ``refresh``: load and invert ``rn`` anew (every ``update_every`` frames); otherwise the cached
        loaded covariance and its inverse are used (the RTF still follows every speech frame).
        """
        rtf_ready = self.params.steering == "rtf" and self._speech_frames >= self._rtf_min
        if not rtf_ready and d is self._ref_steer:  # no direction known yet: the reference mic alone
            return d
        das = d / self._m
        if refresh or self._r is None:
            assert rn is not None  # noise.cov is required (required_keys), mask mode computes it here
            m = self._m
            r = rn.astype(np.complex128)
            tr = np.maximum(np.real(np.trace(r, axis1=1, axis2=2)), 1e-20)
            # Loading bounds the condition number by construction: cond <= (trace + load) / load, so a
            # load of at least trace / (max_condition - 1) is the ill-conditioning guard (no SVD per bin).
            load = np.maximum(self.params.loading * tr / m, tr / (self.params.max_condition - 1.0))
            r += load[:, None, None] * self._eye
            try:
                self._r, self._rinv = r, np.linalg.inv(r)
            except np.linalg.LinAlgError:  # cannot happen with a positive load; kept as the last guard
                self._r = self._rinv = None
                return das
        w = self._rtf_weights() if rtf_ready else self._steered_weights(d)
        bad = ~np.isfinite(w).all(axis=1)
        if bad.any():
            w[bad] = das[bad]
        return w

    def _steered_weights(self, h: np.ndarray) -> np.ndarray:
        """``R^-1 h / (h^H R^-1 h)`` per bin for the steering ``h`` ``(bins, M)``."""
        assert self._rinv is not None
        rh = (self._rinv @ h[:, :, None])[:, :, 0]
        den = np.real(np.einsum("fm,fm->f", h.conj(), rh))
        return rh / np.where(den > 1e-30, den, np.nan)[:, None]  # NaN rows fall back to delay-and-sum

    def _rtf_weights(self) -> np.ndarray:
        """MVDR weights for the relative transfer function: one power iteration, matrix products only.

        Covariance whitening by power iteration: ``v <- R^-1 R_x v`` converges to the principal
        generalised eigenvector of (R_x, R), and the RTF is ``h = R v / (R v)[ref]``. Then ``R^-1 h =
        v / (R v)[ref]``, so the MVDR weights need no second solve: ``w = R^-1 h / (h^H R^-1 h) =
        v conj((R v)[ref]) / (v^H R v)``, and with ``R^-1`` cached between refreshes every frame costs
        four batched matrix-vector products.
        """
        r, rinv = self._r, self._rinv
        assert r is not None and rinv is not None
        v = rinv @ (self._rx @ self._v)
        if self._frame % self.params.update_every == 0:  # the weights are scale-free: rescale rarely
            norm = np.sqrt(np.sum(v.real**2 + v.imag**2, axis=1, keepdims=True))
            v = v / np.where(norm > 1e-30, norm, 1.0)
            if not np.isfinite(v).all():
                v = np.where(np.isfinite(v), v, 0.0)
        self._v = v
        rv = (r @ v)[:, :, 0]  # (bins, M): the unnormalised RTF
        vv = v[:, :, 0]
        den = np.real(np.einsum("fm,fm->f", vv.conj(), rv))
        href = rv[:, self._ref]
        ok = (den > 1e-30) & (np.abs(href) > 1e-30)
        with np.errstate(invalid="ignore", divide="ignore"):  # NaN rows are the fallback's signal
            w = vv * (href.conj() / np.where(ok, den, np.nan))[:, None]
            method = self.params.method
            if method == "mvdr":
                return w
            if method == "mwf":
                # the generalised eigenvalue lam = v^H R_x v / v^H R v = 1 + output SNR of the speech
                # statistics; the rank-1 MWF is the MVDR times the Wiener gain SNR / (1 + SNR)
                rx_v = np.real(np.einsum("fm,fm->f", vv.conj(), (self._rx @ v)[:, :, 0]))
                lam = rx_v / np.maximum(self._rx_w, 1e-12) / den
                g = np.clip(1.0 - 1.0 / np.maximum(lam, 1.0), self._floor, 1.0)
                return w * g[:, None]
            # gev_ban: v itself, scaled by sqrt(v^H R R v / M) / (v^H R v) (blind analytic
            # normalisation: the max-SNR filter's distortion undone for an ideal rank-1 target), and
            # the phase of the reference mic's RTF entry removed as for the MVDR
            ban = np.sqrt(np.sum(np.abs(rv) ** 2, axis=1) / self._m) / den
            return vv * (ban * href.conj() / np.abs(href))[:, None]

    def _residual(self, w: np.ndarray, rn: np.ndarray | None) -> dict[str, np.ndarray]:
        """``noise.psd`` (1, bins) and ``noise.cov`` (bins, 1, 1) at the output: ``w^H R_n w``."""
        if rn is None:
            psd = np.zeros(self._bins, np.float32)
        else:
            psd = np.real(np.einsum("fm,fmn,fn->f", w.conj(), rn, w)).astype(np.float32)
            np.maximum(psd, 0.0, out=psd)
        return {PSD: psd[None, :], COV: psd.astype(np.complex64).reshape(-1, 1, 1)}
