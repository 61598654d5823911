"""IMCRA: noise power tracking by minima-controlled recursive averaging (Cohen 2003).

Per channel ``c`` and bin ``k`` (all arrays ``(channels, bins)``), with ``P = |Y|^2`` the periodogram
of frame ``l``, in |X|^2 units of the chain's STFT:

1. Smoothed periodogram for minimum search: ``Sf = b * P`` (3-bin Hann ``b = [1/4, 1/2, 1/4]`` across
   frequency), ``S = a_s S + (1 - a_s) Sf``; ``Smin`` = minimum of ``S`` over the last ``window_s``
   (Martin's subwindows, :mod:`voxd_noise.minimum`).
2. Rough speech-absence indicator: ``I = [P < g0 Bmin Smin] and [S < z0 Bmin Smin]``.
3. Second iteration, on speech-absent bins only: ``Sf~ = b*(I P) / b*I`` (the previous ``S~`` where no
   neighbour is speech-absent), ``S~ = a_s S~ + (1 - a_s) Sf~``; ``S~min`` = its windowed minimum. With
   speech removed the minimum sits close to the noise floor even with little speech-free time.
4. A priori speech absence: with ``g~ = P / (Bmin S~min)``, ``z~ = S / (Bmin S~min)``:
   ``q = 1`` if ``g~ <= 1``, ``(g1 - g~) / (g1 - 1)`` if ``1 < g~ < g1`` (both when ``z~ < z0``), else 0.
5. A VAD (optional): on a frame it marks as noise, ``q = max(q, min(1 - speech_prob, Q_VAD_MAX))``.
   A causal VAD confirms speech late, so the first frames of every onset come marked as noise: the
   cap keeps the local evidence of step 6 in charge of bins with strong speech.
6. Speech presence probability (Gaussian model): ``p = (1-q) / ((1-q) + q (1 + xi) exp(-v))`` (Cohen's
   ``1 / (1 + q/(1-q) (1+xi) exp(-v))``, written so that ``q = 1`` gives 0 for any ``v``) with
   ``gamma = P / lambda``, ``v = gamma xi / (1 + xi)`` and ``xi`` the decision-directed a priori SNR
   ``xi = a_xi G^2 gamma' + (1 - a_xi) max(gamma - 1, 0)`` (``G = xi / (1 + xi)``, ``'`` previous
   frame), limited to [``XI_MIN``, ``XI_MAX``].
7. Noise update: ``a~ = a_d + (1 - a_d) p``; ``lambda = a~ lambda + (1 - a~) beta P``. Averaging only
   where speech is absent under-weights the large periodogram values of noise, so the observation is
   scaled by ``beta`` (Cohen's 1.47; measured here on white noise alone: median error 0.0 dB); on VAD
   noise frames, where far less is left out, by ``BETA_VAD``.

A rise of the noise level during continuous speech looks like speech until the minimum windows have
passed it: it is followed after about two windows (measured: 2.2 s with the 1 s default, for +10 dB;
digital silence followed by noise likewise). A fall is followed at once (``update_s``).

Time constants are in seconds and turned into per-frame factors from the hop: ``a = exp(-hop / tau)``.
Defaults are Cohen's (``a_s = 0.9``, ``a_d = 0.85``, ``a_xi = 0.92`` at 8 ms frames, ``U*V`` = 0.96 s):
``smooth_s`` 0.076 s, ``update_s`` 0.049 s, ``DD_TAU_S`` 0.096 s, ``window_s`` 1.0 s.
Dimensionless thresholds (``Bmin``, ``g0``, ``g1``, ``z0``, ``beta``) are Cohen's too.

Reference: I. Cohen, "Noise spectrum estimation in adverse environments: improved minima controlled
recursive averaging", IEEE Trans. Speech Audio Process. 11(5), 2003. R. Martin, "Noise power spectral
density estimation based on optimal smoothing and minimum statistics", IEEE TSAP 9(5), 2001.
"""

from __future__ import annotations

import math

import numpy as np

from voxd_noise.minimum import SubwindowMinimum

SUBWINDOWS = 8  # U: subwindows per minimum-search window
B_MIN = 1.66  # bias of the windowed minimum of the smoothed periodogram (noise power / E[Smin])
GAMMA0 = 4.6  # rough test: P above this many times the minimum means speech
GAMMA1 = 3.0  # q falls from 1 to 0 as P / (Bmin S~min) goes from 1 to this
ZETA0 = 1.67  # S above this many times the minimum means speech
BETA = 1.47  # bias compensation of speech-absence-weighted averaging
Q_VAD_MAX = 0.9  # the most a VAD's 'no speech' may raise q: strong local speech evidence still counts
BETA_VAD = 1.1  # compensation on VAD noise frames, where little is left out (measured: white and pink
# noise alone, VAD always "noise": median error -0.55 dB with 1.0, -0.09 dB with 1.1)
DD_TAU_S = 0.096  # decision-directed a priori SNR inside the presence probability (s)
XI_MIN = 10 ** (-25 / 10)  # floor of that a priori SNR (-25 dB)
XI_MAX = 1e10  # and a ceiling (100 dB), so that odds (1 + xi) stays finite in float32 after silence
TINY = 1e-20  # keeps ratios finite on digital silence; far below 16-bit quantisation (~1e-8)


def per_frame(tau_s: float, hop_s: float) -> float:
    """Per-frame smoothing factor of a first-order recursive average with time constant ``tau_s``."""
    return math.exp(-hop_s / tau_s)


def smoothing_matrix(bins: int) -> np.ndarray:
    """``(bins, bins)`` float32 matrix ``B`` such that ``x @ B`` is the 3-bin Hann smoothing of ``x`` across
    frequency (last axis): ``[1/4, 1/2, 1/4]``, renormalised to ``[2/3, 1/3]`` at the edges.

    One matrix product is a single numpy call, cheaper here than five sliced operations.
    """
    m = np.zeros((bins, bins), np.float64)
    idx = np.arange(bins)
    m[idx, idx] = 0.5
    m[idx[1:], idx[:-1]] = 0.25  # x[k+1] contributes to bin k
    m[idx[:-1], idx[1:]] = 0.25  # x[k-1] contributes to bin k
    m[:, [0, -1]] /= m[:, [0, -1]].sum(axis=0)
    return m.astype(np.float32)


class Imcra:
    """Streaming IMCRA noise tracker for ``channels`` x ``bins`` periodograms at one frame per ``hop_s``.

    After :meth:`update`: ``psd`` is the noise power estimate ``(channels, bins)`` float32 (|X|^2
    units); ``spp`` the speech presence probability (0..1); ``keep`` the per-bin weight the update gave
    the previous estimate and ``gain`` the factor on the new observation (``beta``, or 1 on VAD noise
    frames), so that a caller can update other statistics (e.g. a covariance) the same way:
    ``R = keep R + (1 - keep) gain y y^H``. These arrays are updated in place: copy what you keep.

    The hot path works in preallocated float32 buffers (about 60 numpy calls per frame, no large
    temporaries), which matters more than the arithmetic at 4 x 161 values.
    """

    def __init__(self, channels: int, bins: int, hop_s: float, smooth_s: float = 0.076,
                 window_s: float = 1.0, update_s: float = 0.049) -> None:
        if bins < 3:
            raise ValueError("IMCRA needs at least 3 bins")
        shape = (channels, bins)
        # Python floats: numpy keeps float32 arrays float32 with them, and they are cheaper per call
        self.a_s = per_frame(smooth_s, hop_s)
        self.a_d = per_frame(update_s, hop_s)
        self.a_xi = per_frame(DD_TAU_S, hop_s)
        frames_per_sub = max(1, round(window_s / hop_s / SUBWINDOWS))
        self.window_frames = frames_per_sub * SUBWINDOWS
        self._min1 = SubwindowMinimum(shape, SUBWINDOWS, frames_per_sub)
        self._min2 = SubwindowMinimum(shape, SUBWINDOWS, frames_per_sub)
        self._smooth = smoothing_matrix(bins)

        def buf() -> np.ndarray:
            return np.zeros(shape, np.float32)

        self.psd, self.spp, self.keep = buf(), buf(), buf()
        self.gain = 1.0
        self._s, self._s2 = buf(), buf()  # S, and S~ (smoothed over speech-absent bins only)
        self._g2gamma = buf()  # G^2 gamma of the previous frame (decision-directed a priori SNR)
        self._sf, self._t1, self._t2, self._g, self._gh, self._xi, self._v = (buf() for _ in range(7))
        self._m1 = np.zeros(shape, bool)
        self._m2 = np.zeros(shape, bool)
        # [indicator * P; indicator] stacked, so one matrix product smooths both
        self._stack = np.zeros((2 * channels, bins), np.float32)
        self._stack_s = np.zeros((2 * channels, bins), np.float32)
        self._ip, self._ind = self._stack[:channels], self._stack[channels:]
        self._num, self._den = self._stack_s[:channels], self._stack_s[channels:]
        self._started = False

    def reset(self) -> None:
        """Forget everything: the next frame starts the tracker afresh."""
        self._started = False

    def update(self, power: np.ndarray, vad_absence: float | None = None) -> None:
        """Track one periodogram ``power`` ``(channels, bins)`` (float32, |X|^2).

        ``vad_absence``: on a frame an external VAD marks as noise, its probability that the frame holds
        no speech (``1 - speech_prob``); None otherwise. It raises the a priori speech absence ``q`` of
        every bin to at most ``Q_VAD_MAX``: noise-like bins are then averaged in at the full rate,
        while a bin with strong speech evidence stays out (a causal VAD confirms speech late, and its
        first frames of every onset are marked noise).
        """
        sf, t1, m1, m2 = self._sf, self._t1, self._m1, self._m2
        np.matmul(power, self._smooth, out=sf)
        if not self._started:
            self._start(sf)
            return
        s, s2 = self._s, self._s2
        _recursive(s, sf, self.a_s)
        smin = self._min1.push(s)
        # rough indicator of speech absence: P < g0 Bmin Smin and S < z0 Bmin Smin
        np.multiply(smin, GAMMA0 * B_MIN, out=t1)
        np.less(power, t1, out=m1)
        np.multiply(smin, ZETA0 * B_MIN, out=t1)
        np.less(s, t1, out=m2)
        np.logical_and(m1, m2, out=m1)
        # second iteration: smooth only the speech-absent bins (hold S~ where none is nearby)
        np.copyto(self._ind, m1)
        np.multiply(power, self._ind, out=self._ip)
        np.matmul(self._stack, self._smooth, out=self._stack_s)
        np.copyto(sf, s2)
        np.greater(self._den, 0.0, out=m2)
        np.divide(self._num, self._den, out=sf, where=m2)
        _recursive(s2, sf, self.a_s)
        s2min = self._min2.push(s2)
        # a priori speech absence q: 1 below Bmin S~min, falling to 0 at g1 Bmin S~min; 0 where S is high
        np.multiply(s2min, B_MIN, out=t1)
        t1 += TINY
        g = self._g
        np.divide(power, t1, out=g)
        q = g
        q *= -1.0 / (GAMMA1 - 1.0)
        q += GAMMA1 / (GAMMA1 - 1.0)
        np.maximum(q, 0.0, out=q)
        np.minimum(q, 1.0, out=q)
        t1 *= ZETA0
        np.greater_equal(s, t1, out=m2)
        np.copyto(q, 0.0, where=m2)
        if vad_absence is not None:
            np.maximum(q, min(vad_absence, Q_VAD_MAX), out=q)
        self._presence(power, q)
        self._average(power, vad_absence is not None)

    def _presence(self, power: np.ndarray, q: np.ndarray) -> None:
        """``spp = (1 - q) / ((1 - q) + q (1 + xi) exp(-v))``: Cohen's ``1 / (1 + q/(1-q) (1+xi) exp(-v))``
        written so that ``q = 1`` (the minima say: no speech) gives 0 however large ``v`` is. (The other
        form divides by ``1 - q``; with a guard instead, a tracker far below the noise, as after digital
        silence, would see ``v`` so large that it calls everything speech and never recovers.)
        ``xi`` is the decision-directed a priori SNR. ``q`` is overwritten.
        """
        t1, t2, xi, v, prev, p = self._t1, self._t2, self._xi, self._v, self._g2gamma, self.spp
        np.subtract(1.0, q, out=p)  # 1 - q, before q is reused
        gamma = t2
        np.add(self.psd, TINY, out=t1)
        np.divide(power, t1, out=gamma)
        np.subtract(gamma, 1.0, out=xi)
        np.maximum(xi, 0.0, out=xi)
        xi *= 1 - self.a_xi
        np.multiply(prev, self.a_xi, out=t1)
        xi += t1
        np.maximum(xi, XI_MIN, out=xi)  # (two calls: np.clip costs twice as much per call)
        np.minimum(xi, XI_MAX, out=xi)
        gain = self._gh
        np.add(xi, 1.0, out=t1)  # t1 = 1 + xi
        np.divide(xi, t1, out=gain)  # G = xi / (1 + xi) <= 1: products with it cannot overflow
        np.multiply(gamma, gain, out=v)  # v = gamma xi / (1 + xi)
        np.multiply(v, gain, out=prev)  # G^2 gamma
        np.minimum(v, 80.0, out=v)  # exp(-80) is below float32's range anyway
        np.negative(v, out=v)
        np.exp(v, out=v)
        q *= t1
        q *= v  # q (1 + xi) exp(-v)
        q += p
        q += TINY
        p /= q

    def _average(self, power: np.ndarray, vad_noise: bool) -> None:
        """``psd = keep psd + (1 - keep) gain P`` with ``keep = a_d + (1 - a_d) p``."""
        keep, t1, t2, psd = self.keep, self._t1, self._t2, self.psd
        np.multiply(self.spp, 1 - self.a_d, out=keep)
        keep += self.a_d
        self.gain = BETA_VAD if vad_noise else BETA
        np.multiply(power, self.gain, out=t1)
        t1 -= psd
        np.subtract(1.0, keep, out=t2)
        t1 *= t2
        psd += t1

    def _start(self, sf: np.ndarray) -> None:
        self._s[:] = sf
        self._s2[:] = sf
        self._min1.start(sf)
        self._min2.start(sf)
        self.psd[:] = sf  # the first frame may hold speech: the tracker pulls this down within a window
        self.spp.fill(0.0)
        self.keep.fill(0.0)
        self.gain = 1.0
        self._g2gamma.fill(0.0)
        self._started = True


def _recursive(state: np.ndarray, x: np.ndarray, a: float) -> None:
    """``state = a state + (1 - a) x`` in place, without temporaries: ``x + a (state - x)``."""
    state -= x
    state *= a
    state += x
