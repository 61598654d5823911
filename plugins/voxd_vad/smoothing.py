"""Decision smoothing: turns per-unit speech evidence into clean, strictly alternating speech segments.

An engine looks at the stream one decision unit at a time (a WebRTC sub-frame, a Silero chunk) and
gives two levels of evidence per unit:

- ``weak``: the unit may be speech (WebRTC: classified as speech and above the noise gate; Silero:
  probability >= ``neg_threshold``);
- ``strong``: the unit surely is speech (WebRTC: weak and voiced; Silero: probability >= ``threshold``).

:class:`Smoother` is a causal state machine over that evidence, in samples at the chain rate:

- a *burst* is a run of consecutive weak units; its first sample is the onset.
- **silence**: a burst is confirmed once it holds ``start`` samples of strong evidence (a non-weak unit
  before that drops it). The segment is then *pending* until it would be reported at least
  ``min_speech`` samples long (last renewal + ``post_roll`` - onset); a pending segment whose hangover
  runs out is dropped without any event, so no segment shorter than ``min_speech`` is ever reported.
  Then ``speech_start`` goes out, its ``pts`` the onset minus ``pre_roll`` (clamped at 0 and at the
  previous segment's end), so that a consumer (ASR) gets the soft beginning of the word that the
  detector only confirms later.
- **speech**: strong units renew the segment, but only from the second strong unit of a burst on
  (:data:`RENEW_UNITS`): a single voiced sub-frame in running water or a click does not keep a segment
  alive, while every syllable nucleus (several voiced sub-frames in a row) does. After ``end`` samples
  without renewal (the hangover) the segment ends (``speech_end``), reported ``post_roll`` samples after
  the last renewal (at most at the moment of the decision).

Events refer to samples, not to the moment they are decided: a ``speech_start`` is known at least
``start + pre_roll`` after its ``pts``, a ``speech_end`` ``end - post_roll`` after its ``pts``.
``speech_end``'s ``pts`` is exclusive (the first sample after the segment). Starts and ends strictly
alternate.
"""

from __future__ import annotations

from dataclasses import dataclass

SPEECH_START = "speech_start"
SPEECH_END = "speech_end"

Event = tuple[str, int]  # (type, pts): pts in samples at the chain rate since stream start


@dataclass(frozen=True)
class SmoothingSamples:
    """The smoothing durations converted to samples at the chain rate (see :class:`Smoother`)."""

    start: int
    min_speech: int
    end: int
    pre_roll: int
    post_roll: int

    @classmethod
    def from_ms(cls, rate: int, start_ms: float, min_speech_ms: float, end_ms: float, pre_roll_ms: float,
                post_roll_ms: float) -> SmoothingSamples:
        """Convert milliseconds to samples at ``rate`` (Hz), rounding to the nearest sample."""

        def n(ms: float) -> int:
            return round(ms * rate / 1000)

        return cls(n(start_ms), n(min_speech_ms), n(end_ms), n(pre_roll_ms), n(post_roll_ms))


RENEW_UNITS = 2  # strong units a burst needs before they renew a segment's hangover (see Smoother)


class Smoother:
    """Causal speech/non-speech state machine with confirmation, hangover, pre- and post-roll.

    Feed every decision unit in stream order with :meth:`push`; it returns the event the unit
    completes, if any. :meth:`finish` closes an open segment (end of stream, discontinuity).
    """

    __slots__ = ("_burst_onset", "_burst_strong", "_burst_units", "_last_strong", "_onset", "_pending",
                 "_prev_end", "_s", "_start_pts", "speech")

    _pending: bool

    def __init__(self, durations: SmoothingSamples) -> None:
        self._s = durations
        self.speech = False  #: the smoothed state: inside a confirmed segment
        self.reset()

    def push(self, weak: bool, strong: bool, start: int, end: int) -> Event | None:
        """Take the evidence of the unit ``[start, end)`` (samples); return the event it completes, if any.

        ``strong`` implies ``weak``; units must be contiguous and in order (a gap is a discontinuity:
        call :meth:`finish` and :meth:`reset` first).
        """
        s = self._s
        # the current burst: consecutive weak units, with the strong evidence they hold
        if not weak:
            self._burst_onset = -1
        else:
            if self._burst_onset < 0:
                self._burst_onset, self._burst_strong, self._burst_units = start, 0, 0
            if strong:
                self._burst_strong += end - start
                self._burst_units += 1
        if self.speech or self._pending:
            # an isolated strong unit (one voiced sub-frame of running water, a click) does not renew
            if strong and self._burst_units >= RENEW_UNITS:
                self._last_strong = end
                return self._promote()
            if end - self._last_strong < s.end:
                return None
            self._burst_onset = -1  # a new segment starts from a new burst
            if self._pending:  # shorter than min_speech: dropped without a trace
                self._pending = False
                return None
            pts = min(end, self._last_strong + s.post_roll)
            self.speech = False
            self._prev_end = pts
            return (SPEECH_END, pts)
        if self._burst_onset < 0 or self._burst_strong < max(s.start, 1):
            return None
        self._pending = True
        self._onset = self._burst_onset
        self._last_strong = end
        return self._promote()

    def _promote(self) -> Event | None:
        """A pending segment becomes speech once it would be reported ``min_speech`` long."""
        if not self._pending or self._last_strong + self._s.post_roll - self._onset < self._s.min_speech:
            return None
        self._pending = False
        self.speech = True
        pts = max(self._onset - self._s.pre_roll, self._prev_end, 0)
        self._start_pts = pts
        return (SPEECH_START, pts)

    def finish(self, pts: int) -> Event | None:
        """End an open segment at ``pts`` (exclusive: the sample after the last one seen); else None."""
        self._burst_onset = -1
        self._pending = False
        if not self.speech:
            return None
        self.speech = False
        pts = max(pts, self._start_pts)
        self._prev_end = pts
        return (SPEECH_END, pts)

    def reset(self, floor: int = 0) -> None:
        """Forget everything (after :meth:`finish`); no later pre-roll reaches back before ``floor``."""
        self.speech = False
        self._pending = False  # confirmed, but not yet min_speech long: no event yet
        self._onset = 0  # onset of the pending or open segment
        self._burst_onset = -1  # first sample of the current burst, -1 when there is none
        self._burst_strong = 0  # strong-evidence samples in the burst
        self._burst_units = 0  # strong units in the burst
        self._last_strong = 0  # end (exclusive) of the unit that last renewed the segment
        self._start_pts = 0  # pts of the open segment's speech_start
        self._prev_end = floor  # pts of the latest speech_end: no pre-roll reaches back past it
