"""Cut a voxd stream into utterances with its ``speech_start`` / ``speech_end`` events.

    collector = UtteranceCollector()
    with Subscriber("tcp://127.0.0.1:7700") as sub:     # topics audio and event
        for msg in sub:
            for utt in collector.push(msg):
                print(utt.start_s, utt.end_s, recognizer.transcribe(utt.audio))

The events say which samples are speech (their ``pts``, in samples at the stream rate), not when it was
decided: a ``speech_start`` arrives after the audio it points to (the VAD needs some speech to be sure,
and its pre-roll reaches further back), and a ``speech_end`` may arrive before the last frames of its
segment are published. So the collector places every audio frame by its ``pts`` in a short history
(``history_s``) and cuts each utterance from ``speech_start``'s ``pts`` to ``speech_end``'s, once the
audio up to that point has arrived. Message arrival times play no part.

Losses and restarts:

- frames lost in a gap (``seq`` jump) are zeros in the utterance, counted in ``Utterance.missing``;
  an event lost in a gap loses its segment (no start) or lets it run to ``max_s`` (no end);
- a new stream id (the daemon restarted) ends an open utterance with what had arrived
  (``closed_by="restart"``) and starts afresh;
- ``end_of_stream`` and ``stopping`` end an open utterance with what had arrived;
- an utterance longer than ``max_s`` is cut there and goes on as a new one (``closed_by="max_length"``):
  a stuck VAD cannot make memory grow, and Whisper hears at most 30 s in one pass.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from voxd.wire import TOPIC_AUDIO, AudioMessage, EventMessage, Message

__all__ = ["Utterance", "UtteranceCollector"]

#: Events that end the stream's current life: an open utterance is closed with what has arrived.
CLOSING_EVENTS = ("end_of_stream", "stopping")


@dataclass(slots=True)
class Utterance:
    """One speech segment of a stream.

    ``start`` / ``end``: sample indices (pts) at ``rate`` since the stream started, ``end`` exclusive;
    ``audio``: float32 ``(end - start,)``, mono (a multichannel stream is averaged); ``t``: capture time
    of sample ``start`` (Unix s), None when unknown; ``closed_by``: ``speech_end``, ``end_of_stream``,
    ``stopping``, ``restart`` or ``max_length``; ``missing``: samples of the segment lost in gaps
    (zeros in ``audio``).
    """

    stream: str
    start: int
    end: int
    rate: int
    audio: np.ndarray = field(repr=False)
    t: float | None
    closed_by: str
    missing: int = 0

    @property
    def start_s(self) -> float:
        """``start`` in seconds since the stream started."""
        return self.start / self.rate

    @property
    def end_s(self) -> float:
        """``end`` in seconds since the stream started."""
        return self.end / self.rate

    @property
    def duration_s(self) -> float:
        """Length in seconds."""
        return (self.end - self.start) / self.rate


@dataclass(slots=True)
class _Chunk:
    pts: int  # first sample
    x: np.ndarray  # float32 (n,) mono
    t: float  # capture time of the first sample (Unix s)

    @property
    def end(self) -> int:
        return self.pts + len(self.x)


class UtteranceCollector:
    """Turns decoded voxd messages into :class:`Utterance` objects (no socket, no threads: feed it).

    ``history_s``: audio kept before an open utterance, so that a ``speech_start`` whose ``pts`` lies
    up to this far back still gets its audio (voxd's VAD reports a start 0.1-0.5 s after its pts).
    ``max_s``: longest utterance; a longer one is cut into pieces of this length. ``stage``: only
    events from the stage of this name count (a chain with two VADs); None: any stage. ``topic``: the
    audio topic cut (``audio``, or a tap ``audio.<stage>``).
    """

    def __init__(self, history_s: float = 3.0, max_s: float = 30.0, stage: str | None = None,
                 topic: str = TOPIC_AUDIO) -> None:
        if history_s < 0 or max_s <= 0:
            raise ValueError("history_s must be >= 0 and max_s > 0")
        self.history_s = history_s
        self.max_s = max_s
        self.stage = stage
        self.topic = topic
        self.stream: str | None = None  #: stream id of the last message
        self.rate: int | None = None  #: sample rate (Hz) of the last audio frame
        self._chunks: deque[_Chunk] = deque()
        self._end = 0  # pts one past the last sample received
        self._open: int | None = None  # start pts of the utterance in progress
        self._pending: deque[tuple[int, int]] = deque()  # (start, end) ended, waiting for their audio
        self._floor = 0  # end of the latest segment: the next one starts at or after it

    @property
    def in_speech(self) -> bool:
        """True between a ``speech_start`` and its ``speech_end``."""
        return self._open is not None

    def push(self, msg: Message) -> list[Utterance]:
        """Take one message; return the utterances it completed (usually none, sometimes one)."""
        out: list[Utterance] = []
        if self.stream is not None and msg.stream != self.stream:
            out += self._close_all("restart")
            self._chunks.clear()
            self._end = self._floor = 0
            self.rate = None
        self.stream = msg.stream
        if isinstance(msg, AudioMessage):
            if msg.topic == self.topic:
                self._add_audio(msg)
                out += self._emit_ready()
        elif isinstance(msg, EventMessage):
            out += self._event(msg)
        return out

    def close(self, reason: str = "end_of_stream") -> list[Utterance]:
        """End everything in progress with the audio received so far (the stream is over)."""
        return self._close_all(reason)

    # ------------------------------------------------------------------------------------ internals

    def _add_audio(self, msg: AudioMessage) -> None:
        if msg.pts < self._end:
            # Only a restart (handled before) moves pts back; a repeat would garble the audio.
            return
        x = msg.samples[0] if msg.channels == 1 else msg.samples.mean(axis=0, dtype=np.float32)
        self.rate = msg.rate
        self._chunks.append(_Chunk(msg.pts, x, msg.t))
        self._end = msg.pts + msg.n

    def _event(self, msg: EventMessage) -> list[Utterance]:
        if msg.type in CLOSING_EVENTS:
            return self._close_all(msg.type)
        if msg.type not in ("speech_start", "speech_end"):
            return []
        if self.stage is not None and msg.fields.get("stage") != self.stage:
            return []
        pts = msg.fields.get("pts")
        if not isinstance(pts, int) or pts < 0:
            pts = self._end  # an event without a sample position refers to "now"
        if msg.type == "speech_start":
            if self._open is None:  # starts and ends alternate; a second start is a repeat
                # no further back than the end of the previous segment: never share samples
                self._open = max(pts, self._floor)
            return self._emit_ready()
        if self._open is not None:
            if pts > self._open:
                self._pending.append((self._open, pts))
                self._floor = pts
            self._open = None
        return self._emit_ready()

    def _emit_ready(self) -> list[Utterance]:
        """Utterances whose audio is complete, and pieces of an over-long open one; then trim."""
        out: list[Utterance] = []
        while self._pending and self._pending[0][1] <= self._end:
            start, end = self._pending.popleft()
            out.append(self._cut(start, end, "speech_end"))
        if self._open is not None and self.rate:
            max_n = max(1, round(self.max_s * self.rate))
            while self._end - self._open >= max_n:
                out.append(self._cut(self._open, self._open + max_n, "max_length"))
                self._open += max_n
                self._floor = self._open
        self._trim()
        # a piece that lies wholly in a gap (a long outage while in speech) holds nothing to decode
        return [u for u in out if u.missing < u.end - u.start]

    def _close_all(self, reason: str) -> list[Utterance]:
        out = []
        while self._pending:
            start, end = self._pending.popleft()
            out.append(self._cut(start, min(end, self._end), reason))
        if self._open is not None:
            out.append(self._cut(self._open, self._end, reason))
            self._open = None
        self._floor = max(self._floor, self._end)
        return [u for u in out if u.missing < u.end - u.start]  # also drops empty ones

    def _cut(self, start: int, end: int, reason: str) -> Utterance:
        """The audio ``[start, end)`` from the history; samples never received are zeros."""
        assert self.stream is not None
        rate = self.rate or 16000
        if self._chunks:
            # audio from before the first frame we have (we joined late, or the history was too
            # short) is unknown, not silence: the utterance starts where our audio does
            start = min(max(start, self._chunks[0].pts), max(end, self._chunks[0].pts))
            end = max(end, start)
        audio = np.zeros(end - start, dtype=np.float32)
        covered = 0
        t: float | None = None
        for c in self._chunks:
            lo, hi = max(start, c.pts), min(end, c.end)
            if lo >= hi:
                continue
            audio[lo - start:hi - start] = c.x[lo - c.pts:hi - c.pts]
            covered += hi - lo
            if t is None:
                t = c.t + (start - c.pts) / rate
        return Utterance(self.stream, start, end, rate, audio, t, reason, missing=(end - start) - covered)

    def _trim(self) -> None:
        """Drop audio that no utterance can need any more."""
        keep = self._end - round(self.history_s * (self.rate or 16000))
        if self._pending:
            keep = min(keep, self._pending[0][0])
        if self._open is not None:
            keep = min(keep, self._open)
        while self._chunks and self._chunks[0].end <= keep:
            self._chunks.popleft()
