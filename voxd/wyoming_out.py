"""The Wyoming mic service: voxd's processed stream for Home Assistant voice satellites.

Wyoming (the ``wyoming`` package; JSON-line events with binary payloads over TCP or a Unix socket) is
how Home Assistant's voice pipeline talks to its satellites: ``wyoming-satellite --mic-uri
tcp://127.0.0.1:10600`` takes its microphone from any service that sends ``audio-chunk`` events. With
``output.wyoming`` in the config, ``voxd run`` is such a service, beside its ZeroMQ output:

- on connect a client gets ``audio-start`` (the chain's rate, width 2 = s16le, its output channels),
  then one ``audio-chunk`` per published frame (the same samples as the ZeroMQ ``audio`` topic in
  ``s16le``, converted by the one conversion of the project, :func:`voxd.wire.float_to_s16`), with
  ``timestamp`` = the frame's first sample in stream time (ms, ``pts * 1000 / rate``, rounded);
- the VAD's ``speech_start`` / ``speech_end`` become ``voice-started`` / ``voice-stopped`` with the
  event's ``pts`` as ``timestamp`` (ms); ``end_of_stream`` and ``stopping`` become ``audio-stop``; a
  change of the output format (a reload) sends ``audio-stop`` and a new ``audio-start``;
- ``describe`` is answered with an ``info`` whose ``mic`` program is voxd (version, format).

Threads: the server runs an asyncio loop in its own thread (``voxd-wyoming``). The worker thread hands
it each frame with one ``call_soon_threadsafe`` (nothing at all while no client is connected) and never
waits for it: every client has a bounded queue (``queue_ms`` of audio), and a client that falls that
far behind (it stopped reading, its network stalled) is dropped with a warning. It may connect again.

Exposure: Wyoming has neither encryption nor authentication, so like the ZeroMQ output it binds
loopback by default (``tcp://127.0.0.1:10600``, the port Wyoming's mic services use; the satellite
itself serves Home Assistant on 10700); another address needs ``allow_network: true``
(validated in :mod:`voxd.config.model`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import numpy as np
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.audio import AudioFormat as WyAudioFormat
from wyoming.event import Event, async_read_event, async_write_event
from wyoming.info import Attribution, Describe, Info, MicProgram
from wyoming.vad import VoiceStarted, VoiceStopped

from voxd import __version__
from voxd.errors import EX_UNAVAILABLE, VoxdError
from voxd.wire import float_to_s16

log = logging.getLogger(__name__)

WIDTH = 2  #: bytes per sample on the Wyoming side (s16le), what satellites and ASR servers expect
START_TIMEOUT_S = 5.0  # binding the socket (the loop thread reports back within this)
STOP_TIMEOUT_S = 2.0  # clients get their audio-stop, then the loop ends
VOICE_EVENTS = {"speech_start": VoiceStarted, "speech_end": VoiceStopped}
STOP_EVENTS = ("end_of_stream", "stopping")


@dataclass(frozen=True)
class Announce:
    """The stream's format as clients were told it (``audio-start``): ``rate`` Hz, ``channels``."""

    rate: int
    channels: int


def parse_uri(uri: str) -> tuple[str, str, int]:
    """``tcp://HOST:PORT`` -> ("tcp", host, port); ``unix://PATH`` -> ("unix", path, 0); ValueError
    with a one-line reason otherwise."""
    u = urlparse(uri)
    if u.scheme == "tcp":
        try:
            port = u.port
        except ValueError:
            port = None
        if not u.hostname or port is None:
            raise ValueError(f"'{uri}' needs a host and a port, e.g. tcp://127.0.0.1:10600")
        return "tcp", u.hostname, port
    if u.scheme == "unix":
        path = u.netloc + u.path
        if not path:
            raise ValueError(f"'{uri}' needs a socket path, e.g. unix:///run/voxd/wyoming.sock")
        return "unix", path, 0
    raise ValueError(f"'{uri}' must start with tcp:// or unix://")


class _Client:
    """One connected client: its queue of events to send, drained by its own writer task."""

    def __init__(self, writer: asyncio.StreamWriter, depth: int, name: str) -> None:
        self.writer = writer
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=depth)
        self.name = name
        self.dropped = False


class WyomingServer:
    """Serves the processed stream to Wyoming clients (see the module docstring).

    ``uri``: ``tcp://HOST:PORT`` or ``unix://PATH``; ``queue_ms``: audio a client may fall behind
    before it is dropped (ms); ``frame_ms``: the duration of one published frame (ms), to size the
    queues. Call :meth:`start` (binds; :class:`VoxdError` 69 if it cannot), then from one thread
    :meth:`audio` and :meth:`event`, then :meth:`close`.
    """

    def __init__(self, uri: str, queue_ms: float = 2000.0, frame_ms: float = 20.0) -> None:
        self.uri = uri
        self.kind, self.host, self.port = parse_uri(uri)
        self.depth = max(4, round(queue_ms / max(frame_ms, 1.0)))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._stopped: asyncio.Event | None = None
        self._clients: set[_Client] = set()
        self._n_clients = 0  # read by the producer thread without the loop: a plain int is enough
        self._announce: Announce | None = None  # the format of the current stream (None: none yet)
        self._last_ms = 0  # timestamp of the last chunk (ms): a late client's audio-start
        self.counters = {"connections": 0, "dropped_clients": 0, "chunks": 0}  #: since start
        self.bound = ""  #: the address actually bound (the port filled in for tcp://HOST:0)

    @property
    def connected(self) -> int:
        """Clients connected now."""
        return self._n_clients

    # ---------------------------------------------------------------------------- producer side
    def start(self) -> WyomingServer:
        """Bind and start serving in a thread; :class:`VoxdError` (69) when the address cannot be bound."""
        ready: dict[str, Any] = {}
        done = threading.Event()

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._serve(ready, done))
            finally:
                with contextlib.suppress(Exception):
                    loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()
                done.set()

        self._thread = threading.Thread(target=main, name="voxd-wyoming", daemon=True)
        self._thread.start()
        if not done.wait(START_TIMEOUT_S) or "error" in ready:
            if "error" in ready:  # the loop is ending by itself
                self._thread.join(STOP_TIMEOUT_S)
                self._thread = None
            else:
                self.close()
            why = ready.get("error", "timed out")
            raise VoxdError(f"output.wyoming: cannot serve {self.uri}: {why}", EX_UNAVAILABLE)
        log.info("serving Wyoming on %s", self.bound)
        return self

    def audio(self, samples: np.ndarray, pts: int, rate: int) -> None:
        """One published frame: ``samples`` float32 ``(channels, n)`` (full scale 1.0), ``pts`` its first
        sample's index in the stream, ``rate`` Hz. Never blocks; nothing happens without clients."""
        if self._n_clients == 0 or self._loop is None:
            return
        pcm = float_to_s16(samples).T.astype("<i2", copy=False).tobytes()
        self._call(self._fan_audio, pcm, samples.shape[0], pts, rate)

    def event(self, type: str, fields: dict[str, Any], rate: int) -> None:
        """A voxd event (``speech_start`` etc.; ``fields`` as published): the Wyoming counterpart, if
        the protocol has one, goes to every client."""
        if self._n_clients == 0 or self._loop is None:
            return
        if type in VOICE_EVENTS:
            pts = fields.get("pts")
            ts = round(pts * 1000 / rate) if isinstance(pts, int) else None
            self._call(self._fan, VOICE_EVENTS[type](timestamp=ts).event())
        elif type in STOP_EVENTS:
            self._call(self._fan_stop)

    def close(self) -> None:
        """Send ``audio-stop`` to every client, close them and the socket, end the thread (idempotent)."""
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            # the loop may end meanwhile (RuntimeError, cancelled) or hang (timeout): close regardless
            with contextlib.suppress(RuntimeError, concurrent.futures.CancelledError, TimeoutError):
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(STOP_TIMEOUT_S)
        if thread is not None:
            thread.join(STOP_TIMEOUT_S)
        self._thread = None
        if self.kind == "unix" and self.bound:
            with contextlib.suppress(OSError):
                os.unlink(self.host)
            self.bound = ""

    def _call(self, fn: Any, *args: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # closed meanwhile: nobody to send to
            self._loop.call_soon_threadsafe(fn, *args)

    # ------------------------------------------------------------------------------- loop side
    async def _serve(self, ready: dict[str, Any], done: threading.Event) -> None:
        self._stopped = asyncio.Event()
        try:
            if self.kind == "tcp":
                self._server = await asyncio.start_server(self._on_client, self.host, self.port)
                addr = self._server.sockets[0].getsockname()
                self.bound = f"tcp://{addr[0]}:{addr[1]}"
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.host)  # a stale socket file of an earlier run
                self._server = await asyncio.start_unix_server(self._on_client, self.host)
                self.bound = f"unix://{self.host}"
        except OSError as exc:
            ready["error"] = exc.strerror or str(exc)
            done.set()
            return
        done.set()
        await self._stopped.wait()

    async def _shutdown(self) -> None:
        clients = list(self._clients)
        for c in clients:
            if self._announce is not None:
                self._put(c, AudioStop().event())
            self._put(c, None)  # the writer closes after what is queued
        if self._server is not None:
            self._server.close()
        await asyncio.sleep(0)
        deadline = asyncio.get_running_loop().time() + STOP_TIMEOUT_S / 2
        while self._clients and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        for c in list(self._clients):
            c.writer.close()
        assert self._stopped is not None
        self._stopped.set()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or "unix socket"
        client = _Client(writer, self.depth, str(peer))
        self._clients.add(client)
        self._n_clients = len(self._clients)
        self.counters["connections"] += 1
        log.info("wyoming: client %s connected (%d now)", client.name, self._n_clients)
        if self._announce is not None:
            self._put(client, self._start_event(self._announce, self._last_ms))
        sender = asyncio.create_task(self._send_loop(client))
        try:
            while True:
                event = await async_read_event(reader)
                if event is None:
                    break
                if Describe.is_type(event.type):
                    self._put(client, self._info().event(), urgent=True)
        except (OSError, ValueError, TypeError, KeyError, AttributeError, asyncio.IncompleteReadError) as exc:
            # a client that sends garbage (bad JSON, fields of the wrong type: the wyoming parser raises
            # any of these) is disconnected; the stream and the other clients go on
            log.warning("wyoming: client %s: %s; disconnected", client.name, exc)
        finally:
            self._remove(client)
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
            writer.close()

    async def _send_loop(self, client: _Client) -> None:
        try:
            while True:
                event = await client.queue.get()
                if event is None:
                    break
                await async_write_event(event, client.writer)
        except (OSError, RuntimeError):
            pass  # the peer went away: the reader side notices and removes it
        finally:
            self._remove(client)
            client.writer.close()

    def _remove(self, client: _Client) -> None:
        if client in self._clients:
            self._clients.discard(client)
            self._n_clients = len(self._clients)
            if not client.dropped:
                log.info("wyoming: client %s disconnected (%d now)", client.name, self._n_clients)

    def _put(self, client: _Client, event: Event | None, urgent: bool = False) -> None:
        """Queue ``event`` for ``client``; a full queue means the client is ``queue_ms`` behind: drop it."""
        try:
            client.queue.put_nowait(event)
        except asyncio.QueueFull:
            if urgent:  # a describe answer is never worth dropping a client for: skip it
                return
            client.dropped = True
            self.counters["dropped_clients"] += 1
            log.warning("wyoming: client %s fell %d frames behind: dropped (it may connect again)",
                        client.name, client.queue.qsize())
            self._remove(client)
            client.writer.close()

    def _fan(self, event: Event) -> None:
        for c in list(self._clients):
            self._put(c, event)

    def _fan_audio(self, pcm: bytes, channels: int, pts: int, rate: int) -> None:
        fmt = Announce(rate, channels)
        if fmt != self._announce:
            if self._announce is not None:
                self._fan(AudioStop().event())
            self._announce = fmt
            self._fan(self._start_event(fmt, round(pts * 1000 / rate)))
        self._last_ms = round(pts * 1000 / rate)
        chunk = AudioChunk(rate=rate, width=WIDTH, channels=channels, audio=pcm,
                           timestamp=self._last_ms).event()
        self.counters["chunks"] += 1
        self._fan(chunk)

    def _fan_stop(self) -> None:
        if self._announce is not None:
            self._fan(AudioStop().event())
            self._announce = None

    @staticmethod
    def _start_event(fmt: Announce, ms: int) -> Event:
        return AudioStart(rate=fmt.rate, width=WIDTH, channels=fmt.channels, timestamp=ms).event()

    def _info(self) -> Info:
        fmt = self._announce or Announce(16000, 1)
        mic = MicProgram(
            name="voxd", description="voxd: microphone-array voice front-end (cleaned speech)",
            attribution=Attribution(name="voxd", url=""), installed=True,
            version=__version__, mic_format=WyAudioFormat(rate=fmt.rate, width=WIDTH, channels=fmt.channels))
        return Info(mic=[mic])


__all__ = ["WyomingServer", "parse_uri"]
