"""From source blocks to output frames: resample, cut into hops, run the chain, re-frame for the wire.

The daemon (``voxd run``) and offline processing (``voxd process``) both push blocks through a
:class:`Pipeline` that :mod:`voxd.runtime` assembles, so their outputs are identical sample for sample.

A source block holding NaN, an infinity or samples beyond :data:`~voxd.frame.SAMPLE_LIMIT` (60 dB over
full scale) is corrupt: those samples are replaced by 0 before anything sees them, and the chain is
reset at the first clean block after, exactly as after lost input (the published frame says
``discontinuity``). So one bad sample costs at most a restart of the stages' adaptation, never the
rest of the stream. The test is one dot product per block; clean blocks pass untouched.

The pipeline removes the chain's algorithmic delay: output sample ``k`` lines up with input sample ``k``
(at the chain rate), the first ``delay`` output samples (the transforms' warm-up) are dropped, and
:meth:`Pipeline.flush` pushes ``delay`` samples of silence so that the output is exactly as long as the
input.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from voxd.chain import Chain
from voxd.frame import Flags, Frame, finite_within, header_side, sanitized
from voxd.resample import StreamResampler
from voxd.side import AEC_REFERENCE, SPEECH
from voxd.sources.base import Block


@dataclass(slots=True)
class OutFrame:
    """A frame ready for the wire: float32 ``(channels, n)`` at the chain rate.

    ``topic``: ``audio`` or ``audio.<stage>`` (debug tap); ``seq``: per-topic counter; ``pts``: index of
    the first sample since stream start; ``t``: capture time of that sample (Unix s); ``speech``: any
    speech in the frame; ``side``: the JSON-scalar side values of the latest chain frame, plus
    ``discontinuity: true`` on the first frame after input was lost (overrun, device loss).
    """

    topic: str
    samples: np.ndarray
    seq: int
    pts: int
    t: float
    speech: bool = False
    side: dict[str, Any] = field(default_factory=dict)


class Pipeline:
    """Runs ``chain`` on blocks from a source at ``in_rate`` and emits frames of ``out_frame`` samples."""

    def __init__(self, chain: Chain, in_rate: int, out_frame: int, resume: Pipeline | None = None) -> None:
        self.chain = chain
        self.rate = chain.in_format.rate
        self.hop = chain.hop
        self.out_frame = out_frame
        self.delay = chain.delay_samples
        # the capture's playback reference channels (capture.reference_channels) are resampled with the
        # microphones and split from them per hop: they travel as the side value aec.reference
        self._ref = np.asarray(chain.reference, dtype=np.intp)
        self._mics = np.asarray([c for c in range(chain.captured_channels) if c not in chain.reference],
                                dtype=np.intp)
        self.resampler = StreamResampler(in_rate, self.rate, chain.captured_channels)
        self._ratio = self.rate / in_rate
        self._in_samples = 0  # at the source rate
        # (pts at chain rate, t) of recent blocks; bounded: output never lags by more than a few blocks
        self._anchors: deque[tuple[float, float]] = deque(maxlen=256)
        self._pending = np.zeros((chain.captured_channels, 0), np.float32)
        self._pending_flags = Flags.NONE
        self._received = 0  # chain-rate samples into the chain, real ones (not the flush padding)
        self._hops = 0
        self._skip = self.delay  # warm-up output still to drop
        self._emitted = 0  # delay-compensated output samples emitted
        self._out: list[np.ndarray] = []
        self._out_len = 0
        self._out_speech = False
        self._out_side: dict[str, Any] = {}
        self._seq = 0
        self._disc = False  # a discontinuity reached the output: say so in the next frame's header
        self._limit: int | None = None  # total output length, known once flushing
        self._tap_seq: dict[str, int] = {}
        self.frames_in = 0  # chain frames processed
        self.corrupt_blocks = 0  # source blocks that held NaN, infinities or out-of-range samples
        self._corrupt = False  # the last block was corrupt: reset the chain at the next clean one
        if resume is not None:
            self._resume(resume)

    def _resume(self, old: Pipeline) -> None:
        """Continue ``old``'s stream (a reload that changed the source, rate or framing): ``seq`` goes
        on without a gap, ``pts`` jumps forward past what the old pipeline still held (its chain delay
        and its partial frame) and the first frame says ``discontinuity``."""
        self._seq, self.frames_in = old._seq, old.frames_in
        start = round(old._hops * old.hop * self.rate / old.rate)  # old input position, new rate
        self._hops = -(-start // self.hop)
        self._emitted = self._hops * self.hop
        self._received = self._emitted
        self._in_samples = round(self._emitted / self._ratio)
        self._anchors.extend((p * self.rate / old.rate, t) for p, t in old._anchors)
        self._tap_seq = dict(old._tap_seq)
        self._disc = True
        self.corrupt_blocks = old.corrupt_blocks  # a running count for the stats

    def can_swap(self, chain: Chain) -> bool:
        """True when :meth:`swap_chain` can take ``chain`` (same input format and output channels)."""
        old = self.chain
        return (chain.in_format == old.in_format and chain.reference == old.reference
                and chain.out_format.channels == old.out_format.channels
                and chain.out_format.rate == old.out_format.rate)

    def swap_chain(self, chain: Chain) -> None:
        """Replace the chain at the next hop boundary (hot reload); sequence numbers continue.

        ``chain`` must take and give the same format as the current one (rate, hop, channels in and
        out): a change there needs a new pipeline. The old chain is closed here (its stages may still
        emit, e.g. a VAD ends an open segment). The samples the old chain still held (its delay) are
        replaced by the new chain's warm-up output, which covers the same input samples; when the
        delays differ the output stays aligned with the input: a longer new delay drops the
        difference from the new chain's first output, a shorter one inserts that many zeros.
        """
        old = self.chain
        if not self.can_swap(chain):
            raise ValueError(f"cannot swap a chain taking {old.in_format.describe()} for one taking "
                             f"{chain.in_format.describe()} (output {chain.out_format.describe()})")
        old.close()
        diff = chain.delay_samples - self.delay
        if diff >= 0:
            self._skip += diff
        else:
            self._out.append(np.zeros((old.out_format.channels, -diff), np.float32))
            self._out_len += -diff
        self.chain, self.delay = chain, chain.delay_samples
        self._tap_seq = {k: v for k, v in self._tap_seq.items() if k in chain.taps}

    def time_of(self, pts: int) -> float:
        """Capture time (Unix s) of chain-rate sample ``pts``, from the block times seen so far."""
        if not self._anchors:
            return 0.0
        # requests are near the newest blocks: search from the right
        p0, t0 = self._anchors[0]
        for p, t in reversed(self._anchors):
            if p <= pts:
                p0, t0 = p, t
                break
        return t0 + (pts - p0) / self.rate

    def push(self, block: Block) -> list[OutFrame]:
        """Process one source block; return the output frames (and tap frames) completed by it."""
        self._anchors.append((self._in_samples * self._ratio, block.t))
        self._in_samples += block.samples.shape[1]
        self._pending_flags |= block.flags
        x, changed = block.samples, False
        if not finite_within(x):  # the fast test; sanitized() decides (a loud block may be valid)
            x, changed = sanitized(x)
        if changed:
            self.corrupt_blocks += 1
            self._corrupt = True
        elif self._corrupt:
            # the stages have adapted to the replaced samples: start them afresh on real audio
            self._corrupt = False
            self._pending_flags |= Flags.DISCONTINUITY
        x = self.resampler.push(x)
        self._received += x.shape[1]
        return self._feed(x)

    def flush(self) -> list[OutFrame]:
        """End of stream: drain the resampler and the chain; the last frame may be short."""
        x = self.resampler.flush()
        self._received += x.shape[1]
        out = self._feed(x)
        total = self._limit = self._received
        while self._emitted + self._out_len < total:
            out += self._feed(np.zeros((self._pending.shape[0], self.hop), np.float32))
        if self._out_len:
            out.append(self._make(np.concatenate(self._out, axis=1)))
        self._out, self._out_len = [], 0
        return out

    def _feed(self, x: np.ndarray) -> list[OutFrame]:
        out: list[OutFrame] = []
        buf = np.concatenate((self._pending, x), axis=1) if self._pending.shape[1] else x
        n_hops = buf.shape[1] // self.hop
        for i in range(n_hops):
            hop = np.ascontiguousarray(buf[:, i * self.hop : (i + 1) * self.hop])
            out += self._run_hop(hop)
        self._pending = buf[:, n_hops * self.hop :].copy()
        return out

    def _run_hop(self, samples: np.ndarray) -> list[OutFrame]:
        pts = self._hops * self.hop
        side: dict[str, Any] = {}
        if self._ref.size:
            side[AEC_REFERENCE] = samples[self._ref]
            samples = samples[self._mics]
        frame = Frame(samples=samples, seq=self._hops, pts=pts, t=self.time_of(pts), rate=self.rate,
                      flags=self._pending_flags, side=side)
        self._pending_flags = Flags.NONE
        self._hops += 1
        self.frames_in += 1
        result = self.chain.process(frame)
        self._disc |= bool(frame.flags & Flags.DISCONTINUITY)
        out = self._taps() if self.chain.taps else []
        y = result.samples
        assert y is not None
        if self._skip:
            drop = min(self._skip, y.shape[1])
            self._skip -= drop
            y = y[:, drop:]
        if self._limit is not None:  # flushing: the silence pushed in must not lengthen the output
            y = y[:, : max(0, self._limit - self._emitted - self._out_len)]
        if y.shape[1] == 0:
            return out
        self._out.append(y)
        self._out_len += y.shape[1]
        self._out_speech |= bool(result.side.get(SPEECH, False))
        self._out_side = result.side
        while self._out_len >= self.out_frame:
            joined = np.concatenate(self._out, axis=1)
            out.append(self._make(joined[:, : self.out_frame]))
            rest = joined[:, self.out_frame :]
            self._out, self._out_len = ([rest], rest.shape[1]) if rest.shape[1] else ([], 0)
        return out

    def _make(self, y: np.ndarray) -> OutFrame:
        frame = OutFrame("audio", np.ascontiguousarray(y), self._seq, self._emitted,
                         self.time_of(self._emitted), self._out_speech, header_side(self._out_side))
        frame.side.pop(SPEECH, None)
        if self._disc:
            frame.side["discontinuity"] = True
            self._disc = False
        self._seq += 1
        self._emitted += y.shape[1]
        self._out_speech = bool(self._out_side.get(SPEECH, False)) if self._out_len > y.shape[1] else False
        return frame

    def _taps(self) -> list[OutFrame]:
        out = []
        for name, frame in self.chain.tap_frames.items():
            if frame.samples is None:
                continue
            seq = self._tap_seq.get(name, 0)
            self._tap_seq[name] = seq + 1
            out.append(OutFrame(f"audio.{name}", frame.samples, seq, frame.pts, frame.t,
                                bool(frame.side.get(SPEECH, False)), header_side(frame.side)))
        self.chain.tap_frames.clear()
        return out
