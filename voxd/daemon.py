"""``voxd run``: source -> worker thread (pipeline + publisher) -> ZeroMQ, with clean shutdown.

Threads: the main thread handles signals and waits; the worker thread owns the ZeroMQ socket (created,
used and closed there only), reads blocks from the source, runs the pipeline and publishes. SIGTERM or
SIGINT ask the worker to stop; it flushes the chain (nothing already captured is lost) and closes the
socket with a linger so queued messages still go out. A finite file source ends with an
``end_of_stream`` event and exit status 0.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType
from typing import Any

from voxd.chain import Chain, build_chain
from voxd.config import LoadedConfig
from voxd.errors import VoxdError
from voxd.pipeline import OutFrame, Pipeline, event_emitter
from voxd.process import positions_of, speed_of_sound_of
from voxd.publisher import Publisher
from voxd.sources import FileSource, Source

log = logging.getLogger("voxd.daemon")

READ_TIMEOUT_S = 0.1  # how long the worker waits for a block before checking for stop


def make_source(loaded: LoadedConfig) -> Source:
    """The source the ``capture`` section describes (not opened)."""
    cap = loaded.config.capture
    if cap.type == "file":
        return FileSource(cap.path, realtime=cap.realtime, loop=cap.loop)
    if cap.type == "pyaudio":
        from voxd.sources.live import LiveSource

        return LiveSource(cap, loaded.config.processing.rate)
    raise VoxdError(f"capture.type '{cap.type}' is not supported by this build")


class Daemon:
    """One running instance: build with a loaded config, then :meth:`run` until stopped or the end."""

    def __init__(self, loaded: LoadedConfig) -> None:
        self.loaded = loaded
        self.cfg = loaded.config
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.frames = 0
        self.source = make_source(loaded)
        self.chain: Chain | None = None
        self._chain_closed = False

    def prepare(self) -> None:
        """Open the source and build the chain (config or input errors surface here, before threads)."""
        self.source.open()
        try:
            self.chain = build_chain(self.loaded, self.source.channels)
        except BaseException:
            self.source.close()
            raise

    def run(self) -> int:
        """Run until the source ends or a stop signal; returns the exit status."""
        self.prepare()
        worker = threading.Thread(target=self._work, name="voxd-worker", daemon=True)
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            worker.start()
            while worker.is_alive():
                worker.join(0.2)
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
        if self.error is not None:
            raise self.error
        return 0

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        self.stop_event.set()

    def _work(self) -> None:
        chain, src, out = self.chain, self.source, self.cfg.output
        assert chain is not None
        pub: Publisher | None = None
        try:
            pub = Publisher.from_config(out)
            log.info("publishing stream %s on %s", pub.stream, ", ".join(out.endpoints))
            if out.wait_for_subscriber_s > 0 and not pub.wait_for_subscriber(out.wait_for_subscriber_s):
                log.info("no subscriber after %.1f s; starting anyway", out.wait_for_subscriber_s)
            out_frame = max(1, round(chain.in_format.rate * out.frame_ms / 1000))
            emit = event_emitter(out_frame, chain.in_format.rate, pub.send_event)
            chain.open(self.cfg.processing.rate, positions_of(self.loaded), emit=emit,
                       speed_of_sound=speed_of_sound_of(self.loaded))
            pipe = Pipeline(chain, src.rate, out_frame)
            src.start()
            log.info("audio flowing from %s (%d ch, %d Hz)", src.name, src.channels, src.rate)
            self._loop(src, pipe, pub)
        except BaseException as exc:  # reported by the main thread after the worker ends
            self.error = exc
        finally:
            if not self._chain_closed:
                chain.close()
            src.close()
            if pub is not None:
                pub.close()

    def _send(self, pub: Publisher, frames: list[OutFrame]) -> None:
        for f in frames:
            pub.send_audio(f.samples, seq=f.seq, pts=f.pts, t=f.t, rate=self.cfg.processing.rate,
                           speech=f.speech, side=f.side, topic=f.topic)
            if f.topic == "audio":
                self.frames += 1
                self._last_seq = f.seq

    def _loop(self, src: Source, pipe: Pipeline, pub: Publisher) -> None:
        self._last_seq = -1
        interval = self.cfg.output.stats_interval_s
        next_stats = time.monotonic() + interval
        busy_s, audio_s = 0.0, 0.0
        while not self.stop_event.is_set():
            block = src.read(READ_TIMEOUT_S)
            for type_, fields in src.take_events():
                pub.send_event(type_, seq=self._last_seq, **fields)
            if block is None:
                if src.exhausted:
                    break
                continue
            t0 = time.perf_counter()
            self._send(pub, pipe.push(block))
            busy_s += time.perf_counter() - t0
            audio_s += block.samples.shape[1] / src.rate
            if time.monotonic() >= next_stats:
                next_stats += interval
                pub.send_stats(**self._stats(pipe, src, busy_s / audio_s if audio_s else 0.0))
                busy_s, audio_s = 0.0, 0.0
        self._send(pub, pipe.flush())
        # Close the chain before the last event: stages may still publish (a VAD ends an open
        # segment with speech_end), and consumers stop reading at end_of_stream / stopping.
        pipe.chain.close()
        self._chain_closed = True
        if src.exhausted:
            pub.send_event("end_of_stream", seq=self._last_seq, frames=self.frames)
            log.info("end of stream after %d frames", self.frames)
        else:  # stopped by a signal: tell consumers this is a shutdown, not a lost connection
            pub.send_event("stopping", seq=self._last_seq, frames=self.frames)
            log.info("stopped after %d frames", self.frames)

    def _stats(self, pipe: Pipeline, src: Source, rtf: float) -> dict[str, Any]:
        stages = {name: {"p50_us": round(p50, 1), "p99_us": round(p99, 1)}
                  for name, (p50, p99) in pipe.chain.timings().items()}
        return {"frames": self.frames, "chain_frames": pipe.frames_in, "rtf": round(rtf, 4),
                "stages": stages, **src.counters}
