"""``voxd run``: source -> worker thread (pipeline + publisher) -> ZeroMQ, with clean shutdown and reload.

Threads: the main thread handles signals, feeds systemd's watchdog and prepares reloads; the worker
thread owns the ZeroMQ socket (created, used and closed there only), reads blocks from the source, runs
the pipeline and publishes. SIGTERM or SIGINT ask the worker to stop; it flushes the chain (nothing
already captured is lost) and closes the socket with a linger so queued messages still go out. A
finite file source ends with an ``end_of_stream`` event and exit status 0.

SIGHUP reloads the config file (with the same ``--set`` overrides). The file is loaded and validated in
a forked child process (:mod:`voxd.config.background`: a pure-Python parse on a thread of this process
would starve the worker of the GIL), the main thread builds the new chain (and, when those sections
changed, opens the new capture source) off the hot path, then hands it to the worker, which swaps it in
between two source blocks: ``seq`` continues without a gap and a ``reload`` event says what changed.
The output section is applied to the running socket where it can be (endpoints bound and unbound, the
CURVE allow-list replaced; a removed client key cuts that client off), else the socket is rebuilt with
the same stream id. A reload that fails — an invalid file, an endpoint that cannot be bound, a stage
that cannot open — is logged line by line (the usual ``file:line: key: message``), published as a
``reload_failed`` event, and everything that ran before carries on. A SIGHUP that arrives while the
daemon starts (``voxd run`` catches it before it even reads the config: ``early_hup``) is a reload
once it runs.
SIGUSR1 writes every thread's stack to stderr (the journal under systemd).

A fatal error (a stage with ``on_error: fail``, a file source that stops decoding) ends the stream with a
``stopping`` event that carries the error and the exit status, then the documented exit status.

systemd (``Type=notify``, :mod:`voxd.notify`): ``READY=1`` after the first published frame,
``RELOADING=1`` / ``READY=1`` around a reload, ``STOPPING=1`` on a stop signal, ``STATUS=`` lines, and
``WATCHDOG=1`` only while the worker's loop makes progress (a hung stage stops the pings). The pings
come from their own thread, so nothing the main thread does (a reload) can delay them.
"""

from __future__ import annotations

import faulthandler
import logging
import queue
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

from voxd.chain import Chain, build_chain
from voxd.config import LoadedConfig
from voxd.config.background import BackgroundLoad
from voxd.config.model import OutputConfig
from voxd.errors import EX_SOFTWARE, ConfigError, VoxdError
from voxd.notify import Notifier, WatchdogPinger
from voxd.pipeline import OutFrame, Pipeline, event_emitter
from voxd.process import positions_of, speed_of_sound_of
from voxd.publisher import Publisher
from voxd.sources import FileSource, Source

log = logging.getLogger("voxd.daemon")

READ_TIMEOUT_S = 0.1  # how long the worker waits for a block before checking for stop
INPUT_EVENT_S = 1.0  # at most one 'input_invalid' event per this many seconds


def make_source(loaded: LoadedConfig) -> Source:
    """The source the ``capture`` section describes (not opened)."""
    cap = loaded.config.capture
    if cap.type == "file":
        return FileSource(cap.path, realtime=cap.realtime, loop=cap.loop)
    if cap.type == "pyaudio":
        from voxd.sources.live import LiveSource

        return LiveSource(cap, loaded.config.processing.rate)
    raise VoxdError(f"capture.type '{cap.type}' is not supported by this build")


@dataclass
class Reload:
    """A validated reload handed from the main thread to the worker.

    ``loaded``: the new config; ``chain``: its chain, built (not opened) for the source's channels;
    ``source``: a new, opened source when the capture section changed, else None; ``changed``: the
    top-level sections that differ; ``errors``: config error lines when the reload was refused (then
    only a ``reload_failed`` event goes out).
    """

    loaded: LoadedConfig | None = None
    chain: Chain | None = None
    source: Source | None = None
    changed: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()


class Daemon:
    """One running instance: build with a loaded config, then :meth:`run` until stopped or the end.

    ``overrides``: the ``--set`` values the config was loaded with (applied again on reload);
    ``notifier``: the systemd notifier (default: from ``$NOTIFY_SOCKET``, a no-op outside systemd);
    ``early_hup``: set by a SIGHUP handler installed before this daemon existed (SIGHUP's default
    action would end the process): when set, :meth:`run` starts with a reload.
    """

    def __init__(self, loaded: LoadedConfig, overrides: Sequence[str] = (),
                 notifier: Notifier | None = None, early_hup: threading.Event | None = None) -> None:
        self.loaded = loaded
        self.cfg = loaded.config
        self.overrides = tuple(overrides)
        self.notifier = notifier if notifier is not None else Notifier.from_env()
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.frames = 0
        self.heartbeat = 0  # worker loop iterations: the watchdog's sign of life
        self.reloads = 0
        self.source = make_source(loaded)
        self.chain: Chain | None = None
        self._chain_closed = False
        self._reload_asked = threading.Event()
        self._early_hup = early_hup
        self._loading: BackgroundLoad | None = None  # a reload's config, loading in a child process
        self._reloads: queue.SimpleQueue[Reload] = queue.SimpleQueue()
        self._pub: Publisher | None = None  # the worker's publisher (the worker thread alone uses it)
        self._last_seq = -1
        self._corrupt_reported = 0  # pipeline.corrupt_blocks at the last 'input_invalid' event
        self._next_input_event = 0.0
        self._ready_sent = False
        self._win_frames = self._win_speech = 0  # published frames / speech frames since the last stats
        self._last_side: dict[str, Any] = {}

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
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_hup)
        if self._early_hup is not None and self._early_hup.is_set():
            self._reload_asked.set()  # a SIGHUP came while we started: the file may have changed since
        faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
        # its own thread: it must not depend on what the main thread is doing (preparing a reload)
        pinger = WatchdogPinger(self.notifier, lambda: self.heartbeat).start()
        try:
            worker.start()
            while worker.is_alive():
                worker.join(0.1)
                if self.stop_event.is_set():
                    if self._loading is not None:
                        self._loading.cancel()
                        self._loading = None
                    continue
                if self._loading is not None:
                    self._finish_reload()
                elif self._reload_asked.is_set():
                    self._reload_asked.clear()
                    self._start_reload()
        finally:
            if self._loading is not None:
                self._loading.cancel()
            pinger.stop()
            faulthandler.unregister(signal.SIGUSR1)
            for s, h in previous.items():
                signal.signal(s, h)
            self.notifier.close()
        if self.error is not None:
            raise self.error
        return 0

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        self.notifier.stopping()
        self.stop_event.set()

    def _on_hup(self, _signum: int, _frame: FrameType | None) -> None:
        self._reload_asked.set()  # the main loop does the work, not the signal handler

    # ---------------------------------------------------------------------------------------- reload
    def _start_reload(self) -> None:
        """Main thread: start loading the config file in a child process (see the module docstring)."""
        self.notifier.reloading()
        log.info("SIGHUP: reloading %s", self.loaded.path)
        try:
            self._loading = BackgroundLoad(self.loaded.path, self.overrides)
        except OSError as exc:  # fork or pipe refused (no memory, too many processes)
            self._refuse((f"{self.loaded.path}: cannot start loading the config: {exc}",))

    def _refuse(self, lines: tuple[str, ...]) -> None:
        for line in lines:
            log.error("reload refused: %s", line)
        self._reloads.put(Reload(errors=lines))
        self.notifier.ready(status="reload refused: running the previous config")

    def _finish_reload(self) -> None:
        """Main thread, once the child answered: build the new chain (and source) and hand it over."""
        assert self._loading is not None
        answer = self._loading.poll()
        if answer is None:
            return
        self._loading = None
        if isinstance(answer, list):
            self._refuse(tuple(answer))
            return
        self._prepare_reload(answer)

    def _prepare_reload(self, new: LoadedConfig) -> None:
        """Main thread: build the new chain (and open a changed source) off the hot path; hand it over."""
        try:
            changed = tuple(k for k in ("capture", "processing", "array", "chain", "output", "log")
                            if getattr(new.config, k) != getattr(self.cfg, k))
            source: Source | None = None
            channels = self.source.channels
            if "capture" in changed:
                source = make_source(new)
                source.open()
                channels = source.channels
            try:
                chain = build_chain(new, channels)
            except BaseException:
                if source is not None:
                    source.close()
                raise
        except Exception as exc:
            if isinstance(exc, ConfigError):
                self._refuse(tuple(exc.lines))
            else:
                self._refuse((str(exc) if isinstance(exc, VoxdError) else f"{type(exc).__name__}: {exc}",))
            return
        self._reloads.put(Reload(new, chain, source, changed))

    def _apply_reload(self, r: Reload, pub: Publisher, pipe: Pipeline, src: Source
                      ) -> tuple[Publisher, Pipeline, Source]:
        """Worker thread, between two blocks: swap in what changed; returns the objects now in use.

        Whatever can fail comes first — opening the new chain, then the output settings — and a failure
        leaves everything as it was, with a ``reload_failed`` event (see :meth:`_reload_failed`).
        """
        if r.errors:
            pub.send_event("reload_failed", seq=self._last_seq, errors=list(r.errors))
            return pub, pipe, src
        assert r.loaded is not None and r.chain is not None
        new_cfg = r.loaded.config
        out_frame = max(1, round(r.chain.in_format.rate * new_cfg.output.frame_ms / 1000))
        # through self._pub, not pub: the events of the new chain go to whichever publisher is current
        emit = event_emitter(out_frame, r.chain.in_format.rate, self._send_event)
        try:
            r.chain.open(new_cfg.processing.rate, positions_of(r.loaded), emit=emit,
                         speed_of_sound=speed_of_sound_of(r.loaded))
        except Exception as exc:  # a stage that cannot open (a model that fails to load...)
            return self._reload_failed(r, pub, pipe, src, f"chain: cannot open: {type(exc).__name__}: {exc}")
        if "output" in r.changed:
            try:
                pub = self._apply_output(pub, self.cfg.output, new_cfg.output)
            except VoxdError as exc:
                current = self._pub
                if current is None or current.closed:  # not even the old endpoints: nothing to publish on
                    r.chain.close()
                    raise
                return self._reload_failed(r, current, pipe, src, f"output: {exc}")
            self._pub = pub
        if r.source is not None or out_frame != pipe.out_frame or not pipe.can_swap(r.chain):
            if r.source is not None:
                src.close()
                src = r.source
                src.start()
            pipe.chain.close()
            pipe = Pipeline(r.chain, src.rate, out_frame, resume=pipe)
        else:
            pipe.swap_chain(r.chain)
        self.loaded, self.cfg, self.chain, self.source = r.loaded, new_cfg, r.chain, src
        logging.getLogger().setLevel(new_cfg.log.level.upper())
        self.reloads += 1
        pub.send_event("reload", seq=self._last_seq, changed=list(r.changed), count=self.reloads)
        log.info("reloaded (%s); chain: %s", ", ".join(r.changed) or "nothing changed",
                 " -> ".join(s.name for s in r.chain.stages()))
        self.notifier.ready(status=self._status(pub))
        return pub, pipe, src

    def _reload_failed(self, r: Reload, pub: Publisher, pipe: Pipeline, src: Source, error: str
                       ) -> tuple[Publisher, Pipeline, Source]:
        """A reload that validated but could not be applied: undo, tell, carry on with the old setup."""
        assert r.chain is not None
        r.chain.close()
        if r.source is not None:
            r.source.close()
        where = self.loaded.path if r.loaded is None else r.loaded.path
        line = f"{where}: {error}"
        log.error("reload refused: %s", line)
        pub.send_event("reload_failed", seq=self._last_seq, errors=[line])
        self.notifier.ready(status="reload refused: running the previous config")
        return pub, pipe, src

    def _apply_output(self, pub: Publisher, old: OutputConfig, new: OutputConfig) -> Publisher:
        """Worker thread: the new ``output`` section, on the running socket where possible, else on a
        new socket with the same stream id. Raises :class:`VoxdError` with the old settings still (or
        again) in effect; exits through a fatal error if even they cannot be bound again."""
        if pub.reconfigure(new):
            return pub
        stream = pub.stream
        pub.close(linger_ms=200)
        try:
            new_pub = Publisher.from_config(new, stream_id=stream)
        except VoxdError as exc:
            try:  # its endpoints were ours a moment ago
                self._pub = Publisher.from_config(old, stream_id=stream)
            except VoxdError as again:
                raise VoxdError(f"output: the reload failed ({exc}) and the previous endpoints cannot be "
                                f"bound again: {again}", again.exit_status) from again
            raise
        log.info("publishing stream %s on %s", new_pub.stream, ", ".join(new.endpoints))
        return new_pub

    def _send_event(self, type: str, seq: int | None = None, **fields: Any) -> None:
        """Worker thread: an event on the current publisher (stages' emit, through the reloads)."""
        if self._pub is not None and not self._pub.closed:
            self._pub.send_event(type, seq=seq, **fields)

    def _status(self, pub: Publisher) -> str:
        """The one-line ``STATUS=`` summary for systemd."""
        return (f"{self.frames} frames on {', '.join(pub.endpoints)}; chain "
                f"{' -> '.join(s.name for s in self.chain.stages()) if self.chain else '?'}; "
                f"reloads {self.reloads}")

    def _work(self) -> None:
        chain, src, out = self.chain, self.source, self.cfg.output
        assert chain is not None
        pub: Publisher | None = None
        try:
            pub = self._pub = Publisher.from_config(out)
            log.info("publishing stream %s on %s", pub.stream, ", ".join(out.endpoints))
            if out.wait_for_subscriber_s > 0 and not pub.wait_for_subscriber(out.wait_for_subscriber_s):
                log.info("no subscriber after %.1f s; starting anyway", out.wait_for_subscriber_s)
            out_frame = max(1, round(chain.in_format.rate * out.frame_ms / 1000))
            emit = event_emitter(out_frame, chain.in_format.rate, self._send_event)
            chain.open(self.cfg.processing.rate, positions_of(self.loaded), emit=emit,
                       speed_of_sound=speed_of_sound_of(self.loaded))
            pipe = Pipeline(chain, src.rate, out_frame)
            src.start()
            log.info("audio flowing from %s (%d ch, %d Hz)", src.name, src.channels, src.rate)
            self._loop(src, pipe, pub)
        except BaseException as exc:  # reported by the main thread after the worker ends
            self.error = exc
            self._say_stopping(exc)
        finally:
            if not self._chain_closed and self.chain is not None:
                self.chain.close()
            self.source.close()
            if self._pub is not None:
                self._pub.close()

    def _say_stopping(self, exc: BaseException) -> None:
        """A fatal error: tell the subscribers why before the socket closes (they would otherwise see
        only silence, as after a lost connection)."""
        pub = self._pub
        if pub is None or pub.closed:
            return
        status = exc.exit_status if isinstance(exc, VoxdError) else EX_SOFTWARE
        try:
            pub.send_event("stopping", seq=self._last_seq, frames=self.frames, error=str(exc).split("\n")[0],
                           exit_status=status)
        except Exception as send_exc:  # the socket itself may be what failed
            log.debug("could not publish the stopping event: %s", send_exc)

    def _send(self, pub: Publisher, frames: list[OutFrame]) -> None:
        for f in frames:
            pub.send_audio(f.samples, seq=f.seq, pts=f.pts, t=f.t, rate=self.cfg.processing.rate,
                           speech=f.speech, side=f.side, topic=f.topic)
            if f.topic == "audio":
                self.frames += 1
                self._last_seq = f.seq
                self._win_frames += 1
                self._win_speech += bool(f.speech)
                self._last_side = f.side
                if not self._ready_sent:  # audio flows: only now is the service "active"
                    self._ready_sent = True
                    self.notifier.ready(status=self._status(pub))

    def _loop(self, src: Source, pipe: Pipeline, pub: Publisher) -> None:
        self._last_seq = -1
        next_stats = time.monotonic() + self.cfg.output.stats_interval_s
        busy_s, audio_s = 0.0, 0.0
        while not self.stop_event.is_set():
            self.heartbeat += 1
            while True:
                try:
                    request = self._reloads.get_nowait()
                except queue.Empty:
                    break
                pub, pipe, src = self._apply_reload(request, pub, pipe, src)
                self._pub = pub
            block = src.read(READ_TIMEOUT_S)
            for type_, fields in src.take_events():
                pub.send_event(type_, seq=self._last_seq, **fields)
            if block is None:
                if src.exhausted:
                    break
                continue
            t0 = time.perf_counter()
            self._send(pub, pipe.push(block))
            if pipe.corrupt_blocks != self._corrupt_reported:
                self._input_invalid(pub, pipe)
            busy_s += time.perf_counter() - t0
            audio_s += block.samples.shape[1] / src.rate
            if time.monotonic() >= next_stats:
                next_stats += self.cfg.output.stats_interval_s
                pub.send_stats(**self._stats(pipe, src, busy_s / audio_s if audio_s else 0.0))
                self.notifier.status(self._status(pub))
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

    def _input_invalid(self, pub: Publisher, pipe: Pipeline) -> None:
        """Blocks with NaN, infinities or samples beyond the input limit arrived (the pipeline dropped
        those samples and restarts the chain after them): an event, at most one a second, and a log
        line with it."""
        now = time.monotonic()
        if now < self._next_input_event:
            return
        self._next_input_event = now + INPUT_EVENT_S
        new = pipe.corrupt_blocks - self._corrupt_reported
        self._corrupt_reported = pipe.corrupt_blocks
        log.warning("input: %d block%s with NaN, infinite or out-of-range samples (%d in all): those "
                    "samples dropped, the chain restarts after them", new, "s" * (new != 1),
                    pipe.corrupt_blocks)
        pub.send_event("input_invalid", seq=self._last_seq, blocks=new, total=pipe.corrupt_blocks)

    def _stats(self, pipe: Pipeline, src: Source, rtf: float) -> dict[str, Any]:
        stages = {name: {"p50_us": round(p50, 1), "p99_us": round(p99, 1)}
                  for name, (p50, p99) in pipe.chain.timings().items()}
        # stages that keep a summary (Stage.stats) add it under their name; most keep none
        summaries: dict[str, Any] = {}
        for node in pipe.chain.stages():
            try:
                summary = node.stage.stats()
            except Exception as exc:  # a stage's summary is diagnostics: it must never stop the audio
                log.warning("stats of stage '%s' failed: %s: %s", node.name, type(exc).__name__, exc)
                continue
            if summary is not None:
                summaries[node.name] = summary
        extra: dict[str, Any] = {"stage_stats": summaries} if summaries else {}
        # the latest values of the side channels a user watches (direction, gain, level), if present
        extra.update({k: v for k, v in self._last_side.items()
                      if k in ("doa_deg", "agc_gain_db", "level_dbfs", "speech_prob")})
        speech_ratio = self._win_speech / self._win_frames if self._win_frames else 0.0
        self._win_frames = self._win_speech = 0
        return {"frames": self.frames, "chain_frames": pipe.frames_in, "rtf": round(rtf, 4),
                "speech_ratio": round(speech_ratio, 3), "reloads": self.reloads,
                "invalid_input_blocks": pipe.corrupt_blocks,
                "stages": stages, **extra, **src.counters}
