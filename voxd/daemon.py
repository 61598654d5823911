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
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from voxd.chain import Chain, build_chain
from voxd.config import LoadedConfig
from voxd.config.background import BackgroundLoad
from voxd.config.model import OutputConfig
from voxd.errors import EX_SOFTWARE, ConfigError, VoxdError
from voxd.logsetup import journal_priorities
from voxd.notify import Notifier, WatchdogPinger
from voxd.pipeline import OutFrame, Pipeline
from voxd.publisher import Publisher
from voxd.runtime import make_pipeline, open_chain, output_frame_samples
from voxd.side import watched_names
from voxd.sources import FileSource, Source
from voxd.wyoming_out import WyomingServer

log = logging.getLogger("voxd.daemon")

READ_TIMEOUT_S = 0.1  # how long the worker waits for a block before checking for stop
INPUT_EVENT_S = 1.0  # at most one 'input_invalid' event per this many seconds


def _start_wyoming(out: OutputConfig) -> WyomingServer | None:
    """The Wyoming mic service of ``out.wyoming``, serving (None without one); VoxdError 69 if it
    cannot bind."""
    if out.wyoming is None:
        return None
    return WyomingServer(out.wyoming.uri, out.wyoming.queue_ms, out.frame_ms).start()


def make_source(loaded: LoadedConfig) -> Source:
    """The source the ``capture`` section describes (not opened)."""
    cap = loaded.config.capture
    if cap.type == "file":
        assert cap.path is not None  # FileCapture's validator requires one
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


@dataclass
class WorkerState:
    """Everything the worker thread runs with, in one place: created by :meth:`Daemon.prepare`, then
    owned by the worker thread, which changes it in place (a reload swaps ``loaded``, ``chain``,
    ``pipe``, ``source``, ``pub``). The main thread only reads ``loaded``, ``source.channels``,
    ``chain`` and the counters (for a reload's diff and the systemd status line).

    ``loaded``: the config in effect; ``source``: the capture source; ``chain``: the chain in effect
    (``pipe.chain`` once running); ``pipe``: the pipeline (None until the worker starts); ``pub``: the
    publisher (created, used and closed on the worker thread only); ``wy``: the Wyoming mic service
    (``output.wyoming``; fed and closed by the worker thread); ``chain_closed``: the chain was
    closed at the end of the stream; ``last_seq``: ``seq`` of the last published audio frame (-1:
    none); ``frames``: audio frames published; ``reloads``: reloads applied; ``ready_sent``: systemd
    was told READY (after the first frame); ``win_frames``/``win_speech``: published / speech frames
    since the last ``stats`` message; ``last_side``: the side values of the last published frame;
    ``corrupt_reported``: ``pipe.corrupt_blocks`` at the last ``input_invalid`` event, which may come
    again at ``next_input_event`` (monotonic s) at the earliest.
    """

    loaded: LoadedConfig
    source: Source
    chain: Chain
    pipe: Pipeline | None = None
    pub: Publisher | None = None
    wy: WyomingServer | None = None
    chain_closed: bool = False
    last_seq: int = -1
    frames: int = 0
    reloads: int = 0
    ready_sent: bool = False
    win_frames: int = 0
    win_speech: int = 0
    last_side: dict[str, Any] = field(default_factory=dict)
    corrupt_reported: int = 0
    next_input_event: float = 0.0


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
        self.overrides = tuple(overrides)
        self.notifier = notifier if notifier is not None else Notifier.from_env()
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.heartbeat = 0  # worker loop iterations: the watchdog's sign of life
        self.state: WorkerState | None = None  # made by prepare(), then the worker's
        self._reload_asked = threading.Event()
        self._early_hup = early_hup
        self._loading: BackgroundLoad | None = None  # a reload's config, loading in a child process
        self._reloads: queue.SimpleQueue[Reload] = queue.SimpleQueue()

    def prepare(self) -> WorkerState:
        """Open the source and build the chain (config or input errors surface here, before threads)."""
        source = make_source(self.loaded)
        source.open()
        try:
            chain = build_chain(self.loaded, source.channels)
        except BaseException:
            source.close()
            raise
        self.state = WorkerState(self.loaded, source, chain)
        return self.state

    def run(self) -> int:
        """Run until the source ends or a stop signal; returns the exit status."""
        journal_priorities()  # stderr is the journal (systemd): each line with its priority, <4> etc.
        state = self.prepare()
        worker = threading.Thread(target=self._work, args=(state,), name="voxd-worker", daemon=True)
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
                    self._finish_reload(state)
                elif self._reload_asked.is_set():
                    self._reload_asked.clear()
                    self._start_reload(state)
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
    def _start_reload(self, state: WorkerState) -> None:
        """Main thread: start loading the config file in a child process (see the module docstring)."""
        self.notifier.reloading()
        path = state.loaded.path
        log.info("SIGHUP: reloading %s", path)
        try:
            self._loading = BackgroundLoad(path, self.overrides)
        except OSError as exc:  # fork or pipe refused (no memory, too many processes)
            self._refuse((f"{path}: cannot start loading the config: {exc}",))

    def _refuse(self, lines: tuple[str, ...]) -> None:
        for line in lines:
            log.error("reload refused: %s", line)
        self._reloads.put(Reload(errors=lines))
        self.notifier.ready(status="reload refused: running the previous config")

    def _finish_reload(self, state: WorkerState) -> None:
        """Main thread, once the child answered: build the new chain (and source) and hand it over."""
        assert self._loading is not None
        answer = self._loading.poll()
        if answer is None:
            return
        self._loading = None
        if isinstance(answer, list):
            self._refuse(tuple(answer))
            return
        self._prepare_reload(state, answer)

    def _prepare_reload(self, state: WorkerState, new: LoadedConfig) -> None:
        """Main thread: build the new chain (and open a changed source) off the hot path; hand it over."""
        try:
            old_cfg = state.loaded.config
            changed = tuple(k for k in ("capture", "processing", "array", "chain", "output", "log")
                            if getattr(new.config, k) != getattr(old_cfg, k))
            source: Source | None = None
            channels = state.source.channels
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

    def _apply_reload(self, state: WorkerState, r: Reload) -> None:
        """Worker thread, between two blocks: swap in what changed, in ``state``.

        Whatever can fail comes first — opening the new chain, then the output settings — and a failure
        leaves everything as it was, with a ``reload_failed`` event (see :meth:`_reload_failed`).
        """
        assert state.pub is not None and state.pipe is not None
        if r.errors:
            state.pub.send_event("reload_failed", seq=state.last_seq, errors=list(r.errors))
            return
        assert r.loaded is not None and r.chain is not None
        new_cfg = r.loaded.config
        try:
            # the events of the new chain go to whichever publisher is current (state.pub)
            open_chain(r.loaded, r.chain, lambda type, seq=None, **f: self._send_event(state, type, seq, **f))
        except Exception as exc:  # a stage that cannot open (a model that fails to load...)
            self._reload_failed(state, r, f"chain: cannot open: {type(exc).__name__}: {exc}")
            return
        wy_changed = new_cfg.output.wyoming != state.loaded.config.output.wyoming
        if wy_changed:
            try:
                state.wy = self._apply_wyoming(state, new_cfg.output)
            except VoxdError as exc:
                self._reload_failed(state, r, f"output.wyoming: {exc}")
                return
        if "output" in r.changed:
            try:
                state.pub = self._apply_output(state, state.pub, state.loaded.config.output, new_cfg.output)
            except VoxdError as exc:
                if state.pub is None or state.pub.closed:  # not even the old endpoints: nothing to publish on
                    r.chain.close()
                    raise
                if wy_changed:  # the reload is refused as a whole: the previous Wyoming service again
                    try:
                        state.wy = self._apply_wyoming(state, state.loaded.config.output)
                    except VoxdError as again:
                        log.error("output.wyoming: the previous service cannot serve again: %s", again)
                self._reload_failed(state, r, f"output: {exc}")
                return
        pub, pipe = state.pub, state.pipe
        out_frame = output_frame_samples(r.loaded)
        if r.source is not None or out_frame != pipe.out_frame or not pipe.can_swap(r.chain):
            if r.source is not None:
                state.source.close()
                state.source = r.source
                state.source.start()
            pipe.chain.close()
            state.pipe = make_pipeline(r.loaded, r.chain, state.source.rate, resume=pipe)
        else:
            pipe.swap_chain(r.chain)
        state.loaded, state.chain = r.loaded, r.chain
        self.loaded = r.loaded
        logging.getLogger().setLevel(new_cfg.log.level.upper())
        state.reloads += 1
        pub.send_event("reload", seq=state.last_seq, changed=list(r.changed), count=state.reloads)
        log.info("reloaded (%s); chain: %s", ", ".join(r.changed) or "nothing changed",
                 " -> ".join(s.name for s in r.chain.stages()))
        self.notifier.ready(status=self._status(state))

    def _reload_failed(self, state: WorkerState, r: Reload, error: str) -> None:
        """A reload that validated but could not be applied: undo, tell, carry on with the old setup."""
        assert r.chain is not None and state.pub is not None
        r.chain.close()
        if r.source is not None:
            r.source.close()
        where = state.loaded.path if r.loaded is None else r.loaded.path
        line = f"{where}: {error}"
        log.error("reload refused: %s", line)
        state.pub.send_event("reload_failed", seq=state.last_seq, errors=[line])
        self.notifier.ready(status="reload refused: running the previous config")

    def _apply_output(self, state: WorkerState, pub: Publisher, old: OutputConfig, new: OutputConfig
                      ) -> Publisher:
        """Worker thread: the new ``output`` section, on the running socket where possible, else on a
        new socket with the same stream id. Raises :class:`VoxdError` with the old settings still (or
        again) in effect (``state.pub``); exits through a fatal error if even they cannot be bound
        again."""
        if pub.reconfigure(new):
            return pub
        stream = pub.stream
        pub.close(linger_ms=200)
        try:
            new_pub = Publisher.from_config(new, stream_id=stream)
        except VoxdError as exc:
            try:  # its endpoints were ours a moment ago
                state.pub = Publisher.from_config(old, stream_id=stream)
            except VoxdError as again:
                raise VoxdError(f"output: the reload failed ({exc}) and the previous endpoints cannot be "
                                f"bound again: {again}", again.exit_status) from again
            raise
        log.info("publishing stream %s on %s", new_pub.stream, ", ".join(new.endpoints))
        return new_pub

    def _apply_wyoming(self, state: WorkerState, new: OutputConfig) -> WyomingServer | None:
        """Worker thread: a changed ``output.wyoming``: the old service closes (its clients get
        ``audio-stop``), the new one binds. Raises :class:`VoxdError` with the old one serving again."""
        old = state.loaded.config.output
        if state.wy is not None:
            state.wy.close()
            state.wy = None
        try:
            return _start_wyoming(new)
        except VoxdError:
            try:
                state.wy = _start_wyoming(old)
            except VoxdError as again:
                log.error("output.wyoming: the previous service cannot serve again: %s", again)
            raise

    def _send_event(self, state: WorkerState, type: str, seq: int | None = None, **fields: Any) -> None:
        """Worker thread: an event on the current publisher (stages' emit, through the reloads) and its
        Wyoming counterpart, if any."""
        if state.pub is not None and not state.pub.closed:
            state.pub.send_event(type, seq=seq, **fields)
        if state.wy is not None:
            state.wy.event(type, fields, state.loaded.config.processing.rate)

    def _status(self, state: WorkerState) -> str:
        """The one-line ``STATUS=`` summary for systemd."""
        endpoints = ", ".join(state.pub.endpoints) if state.pub is not None else "?"
        return (f"{state.frames} frames on {endpoints}; chain "
                f"{' -> '.join(s.name for s in state.chain.stages())}; reloads {state.reloads}")

    # ---------------------------------------------------------------------------------------- worker
    def _work(self, state: WorkerState) -> None:
        out = state.loaded.config.output
        try:
            pub = state.pub = Publisher.from_config(out)
            log.info("publishing stream %s on %s", pub.stream, ", ".join(out.endpoints))
            state.wy = _start_wyoming(out)
            if out.wait_for_subscriber_s > 0 and not pub.wait_for_subscriber(out.wait_for_subscriber_s):
                log.info("no subscriber after %.1f s; starting anyway", out.wait_for_subscriber_s)
            open_chain(state.loaded, state.chain,
                       lambda type, seq=None, **f: self._send_event(state, type, seq, **f))
            state.pipe = make_pipeline(state.loaded, state.chain, state.source.rate)
            src = state.source
            src.start()
            log.info("audio flowing from %s (%d ch, %d Hz)", src.name, src.channels, src.rate)
            self._loop(state)
        except BaseException as exc:  # reported by the main thread after the worker ends
            self.error = exc
            self._say_stopping(state, exc)
        finally:
            if not state.chain_closed:
                state.chain.close()
            state.source.close()
            if state.wy is not None:
                state.wy.close()  # after the last frames and events: its clients get audio-stop
            if state.pub is not None:
                state.pub.close()

    def _say_stopping(self, state: WorkerState, exc: BaseException) -> None:
        """A fatal error: tell the subscribers why before the socket closes (they would otherwise see
        only silence, as after a lost connection)."""
        pub = state.pub
        if pub is None or pub.closed:
            return
        status = exc.exit_status if isinstance(exc, VoxdError) else EX_SOFTWARE
        try:
            pub.send_event("stopping", seq=state.last_seq, frames=state.frames,
                           error=str(exc).split("\n")[0], exit_status=status)
        except Exception as send_exc:  # the socket itself may be what failed
            log.debug("could not publish the stopping event: %s", send_exc)

    def _send(self, state: WorkerState, frames: list[OutFrame]) -> None:
        pub = state.pub
        assert pub is not None
        rate = state.loaded.config.processing.rate
        for f in frames:
            pub.send_audio(f.samples, seq=f.seq, pts=f.pts, t=f.t, rate=rate, speech=f.speech, side=f.side,
                           topic=f.topic)
            if f.topic == "audio":
                if state.wy is not None:
                    state.wy.audio(f.samples, f.pts, rate)
                state.frames += 1
                state.last_seq = f.seq
                state.win_frames += 1
                state.win_speech += bool(f.speech)
                state.last_side = f.side
                if not state.ready_sent:  # audio flows: only now is the service "active"
                    state.ready_sent = True
                    self.notifier.ready(status=self._status(state))

    def _loop(self, state: WorkerState) -> None:
        state.last_seq = -1
        next_stats = time.monotonic() + state.loaded.config.output.stats_interval_s
        busy_s, audio_s = 0.0, 0.0
        while not self.stop_event.is_set():
            self.heartbeat += 1
            while True:
                try:
                    request = self._reloads.get_nowait()
                except queue.Empty:
                    break
                self._apply_reload(state, request)
            pub, pipe, src = state.pub, state.pipe, state.source
            assert pub is not None and pipe is not None
            block = src.read(READ_TIMEOUT_S)
            for type_, fields in src.take_events():
                pub.send_event(type_, seq=state.last_seq, **fields)
            if block is None:
                if src.exhausted:
                    break
                continue
            t0 = time.perf_counter()
            self._send(state, pipe.push(block))
            if pipe.corrupt_blocks != state.corrupt_reported:
                self._input_invalid(state)
            busy_s += time.perf_counter() - t0
            audio_s += block.samples.shape[1] / src.rate
            if time.monotonic() >= next_stats:
                next_stats += state.loaded.config.output.stats_interval_s
                pub.send_stats(**self._stats(state, busy_s / audio_s if audio_s else 0.0))
                self.notifier.status(self._status(state))
                busy_s, audio_s = 0.0, 0.0
        pub, pipe, src = state.pub, state.pipe, state.source
        assert pub is not None and pipe is not None
        self._send(state, pipe.flush())
        # Close the chain before the last event: stages may still publish (a VAD ends an open
        # segment with speech_end), and consumers stop reading at end_of_stream / stopping.
        pipe.chain.close()
        state.chain_closed = True
        if src.exhausted:
            self._send_event(state, "end_of_stream", seq=state.last_seq, frames=state.frames)
            log.info("end of stream after %d frames", state.frames)
        else:  # stopped by a signal: tell consumers this is a shutdown, not a lost connection
            self._send_event(state, "stopping", seq=state.last_seq, frames=state.frames)
            log.info("stopped after %d frames", state.frames)

    def _input_invalid(self, state: WorkerState) -> None:
        """Blocks with NaN, infinities or samples beyond the input limit arrived (the pipeline dropped
        those samples and restarts the chain after them): an event, at most one a second, and a log
        line with it."""
        now = time.monotonic()
        if now < state.next_input_event:
            return
        assert state.pub is not None and state.pipe is not None
        total = state.pipe.corrupt_blocks
        state.next_input_event = now + INPUT_EVENT_S
        new = total - state.corrupt_reported
        state.corrupt_reported = total
        log.warning("input: %d block%s with NaN, infinite or out-of-range samples (%d in all): those "
                    "samples dropped, the chain restarts after them", new, "s" * (new != 1), total)
        state.pub.send_event("input_invalid", seq=state.last_seq, blocks=new, total=total)

    def _stats(self, state: WorkerState, rtf: float) -> dict[str, Any]:
        pipe = state.pipe
        assert pipe is not None
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
        if state.wy is not None:  # the Wyoming mic service: clients now, ever, dropped for stalling
            extra["wyoming"] = {"clients": state.wy.connected, **state.wy.counters}
        # the latest values of the side values declared watched (direction, gain, level...), if present
        watched = watched_names()
        extra.update({k: v for k, v in state.last_side.items() if k in watched})
        speech_ratio = state.win_speech / state.win_frames if state.win_frames else 0.0
        state.win_frames = state.win_speech = 0
        return {"frames": state.frames, "chain_frames": pipe.frames_in, "rtf": round(rtf, 4),
                "speech_ratio": round(speech_ratio, 3), "reloads": state.reloads,
                "invalid_input_blocks": pipe.corrupt_blocks,
                "stages": stages, **extra, **state.source.counters}
