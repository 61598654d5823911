"""Echo-only and double-talk decisions of the ``aec`` stage (engine speex), one per 10 ms hop.

A voice front-end must not trigger on its own playback: after the canceller the echo is 20-35 dB
weaker, but what is left of it is still speech (or music), which a VAD reports as speech. This module
tells the VAD which hops hold nothing but that residue. It adapts no filter; per hop of the first
channel it compares what the canceller already has:

- the **far end is active** while the aligned reference is above :data:`REF_FLOOR_DBFS`, and for
  ``hold_s`` after (the room's echo tail outlasts the reference); otherwise nothing is decided;
- **level**: the filter's echo estimate (``mic - linear``: its input less its linear output) against
  the stage's output. An output more than ``margin_db`` under the echo estimate is the canceller's
  residue. A user who talks over the playback is, at the microphones, up to ``margin_db`` under the
  echo (a loudspeaker a few centimetres away is loud), and survives the canceller;
- **coherence**, where the level alone says "not echo only": the share of the linear output's power
  (300 Hz - 4 kHz) that the reference predicts, from cross- and auto-spectra averaged recursively over
  such hops (``smooth`` per hop, ~10 hops; decayed for the hops in between, whose level decided: the
  two FFTs and the averages are spent only where they can change the answer). Residual echo is the
  reference through some path, even one the filter has not learnt yet (the loudspeaker moved, the
  volume changed, the clocks drift), so it is predictable; a near-end talker is not. Over
  :data:`COHERENT_SHARE`: echo only;
- **warm-up**: during the first ``converge_s`` of playback after the canceller (re)started, while its
  linear filter removes less than ``converged_db``, every hop of an active far end is echo only.

``doubletalk`` is an active far end that is not echo only. Powers are in int16 units squared (the
canceller's scale); ``lag`` is the output's delay behind the canceller's input in hops (1 with
SpeexDSP's suppressor, 0 without).
"""

from __future__ import annotations

from collections import deque

import numpy as np

REF_FLOOR_DBFS = -60.0  #: a reference hop quieter than this (RMS, dB full scale) is not playback
COHERENT_SHARE = 0.5  #: a linear output more than this share predictable from the reference is echo
BAND_HZ = (300.0, 4000.0)  #: the coherence band: speech's strong harmonics, where echo and user overlap
_FULL = 32767.0**2


class EchoGate:
    """Per hop: ``(echo_only, doubletalk)`` of the first channel (see the module docstring).

    ``rate`` Hz, ``hop`` samples, ``lag`` hops; ``margin_db`` (dB, positive): how far under the echo
    estimate the output must be to count as echo only; ``converge_s``: the warm-up (s of far-end
    activity); ``converged_db``: the linear filter's echo reduction that ends it early; ``hold_s``: the far
    end counts as active this long after the reference fell silent; ``smooth``: the per-hop forgetting
    factor of the power and spectral averages. Buffers are made here; :meth:`push` allocates only
    small temporaries (the FFT's output among them).
    """

    def __init__(self, rate: int, hop: int, lag: int, margin_db: float = 10.0, converge_s: float = 1.5,
                 converged_db: float = 10.0, hold_s: float = 0.2, smooth: float = 0.9) -> None:
        self.hop, self.smooth = hop, smooth
        self.margin = 10.0 ** (-margin_db / 10.0)
        self.converge_hops = round(converge_s * rate / hop)
        self.converged = 10.0 ** (converged_db / 10.0)
        self.hold_hops = round(hold_s * rate / hop)
        self.ref_floor = _FULL * 10.0 ** (REF_FLOOR_DBFS / 10.0) * hop
        n = 2 * hop  # the shared STFT's window: 20 ms at a 10 ms hop
        self._win = np.sqrt(0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(np.float32)
        freqs = np.fft.rfftfreq(n, 1.0 / rate)
        self._band = slice(int(np.searchsorted(freqs, BAND_HZ[0])), int(np.searchsorted(freqs, BAND_HZ[1])))
        bins = self._band.stop - self._band.start
        # the last two hops of the reference (sum of its channels) + 1j * those of the linear output: one
        # complex FFT gives both spectra (X[k] and conj(X[n - k]) separate them)
        self._zbuf = np.zeros(n, np.complex128)
        # bins n - k for k in the band, as a slice (reversed below): no fancy indexing per hop
        self._mirror = slice(n - self._band.stop + 1, n - self._band.start + 1)
        self._srr = np.zeros(bins, np.float64)
        self._see = np.zeros(bins, np.float64)
        self._sre = np.zeros(bins, np.complex128)
        self._echo: deque[float] = deque([0.0] * (lag + 1), maxlen=lag + 1)  # echo estimates, oldest first
        self.coherent = 0.0  #: the last hop's coherent share (0-1; diagnostics)
        self.reset()

    def reset(self) -> None:
        """The canceller restarted: it must converge again."""
        self._held = 0  # hops left of the far end's hold
        self._played = 0  # hops of active far end since the canceller started
        self._p_mic = self._p_lin = 0.0
        self._zbuf[:] = 0.0
        self._since = 0  # hops since the spectral averages were last updated
        self._srr[:] = 0.0
        self._see[:] = 0.0
        self._sre[:] = 0.0
        for i in range(len(self._echo)):
            self._echo[i] = 0.0
        self.coherent = 0.0

    def _coherence(self) -> float:
        """Update the spectral averages with the current two hops (decayed for the hops skipped since
        the last update) and return the share of the linear output predictable from the reference."""
        decay = self.smooth ** self._since
        self._since = 0
        Z = np.fft.fft(self._zbuf * self._win)
        zk, zm = Z[self._band], np.conj(Z[self._mirror][::-1])
        R, E = zk + zm, zk - zm  # 2 * the reference's and 2j * the output's spectra: the share is scale-free
        self._srr *= decay
        self._srr += (R * R.conj()).real
        self._see *= decay
        self._see += (E * E.conj()).real
        self._sre *= decay
        self._sre += R.conj() * E
        predicted = (self._sre * self._sre.conj()).real / (self._srr + 1e-3)
        self.coherent = float(predicted.sum() / (self._see.sum() + 1e-3))
        return self.coherent

    def push(self, mic: np.ndarray, linear: np.ndarray, out: np.ndarray,
             ref: np.ndarray) -> tuple[bool, bool]:
        """One hop: ``mic`` and ``linear`` int16 ``(hop,)`` (the canceller's input and its linear output),
        ``out`` ``(hop,)`` the stage's output in int16 units (``lag`` hops behind), ``ref`` int16
        ``(refs, hop)`` the aligned reference. Returns ``(echo_only, doubletalk)`` for ``out``."""
        hop, a = self.hop, self.smooth
        m = mic.astype(np.float32)
        lin = linear.astype(np.float32)
        e = m - lin
        self._echo.append(float(np.dot(e, e)))
        r = ref.astype(np.float32).sum(axis=0)
        z = self._zbuf
        z[:hop] = z[hop:]
        z.real[hop:] = r
        z.imag[hop:] = lin
        if float(np.dot(r, r)) > self.ref_floor:
            self._held = self.hold_hops
        elif self._held > 0:
            self._held -= 1
        if self._held == 0:
            return False, False
        self._played += 1
        self._p_mic = a * self._p_mic + (1 - a) * float(np.dot(m, m))
        self._p_lin = a * self._p_lin + (1 - a) * float(np.dot(lin, lin))
        o = out.astype(np.float32)
        warming = self._played <= self.converge_hops and self._p_mic < self.converged * self._p_lin
        echo_only = warming or float(np.dot(o, o)) < self.margin * self._echo[0]
        self._since += 1
        if not echo_only:  # only here is the coherence needed: the spectra are updated for these hops
            echo_only = self._coherence() > COHERENT_SHARE
        return echo_only, not echo_only


__all__ = ["BAND_HZ", "COHERENT_SHARE", "REF_FLOOR_DBFS", "EchoGate"]
