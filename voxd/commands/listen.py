"""``voxd listen``: subscribe to a voxd stream and write it to a WAV file or raw PCM on stdout.

Stops on an ``end_of_stream`` event, after ``seconds`` of audio, or on SIGINT/SIGTERM, and always closes
the output properly (a WAV header that matches its data). A summary goes to stderr, for example::

    received 250 frames (5.000 s, 1 ch, 16000 Hz), 0 gaps, 0 restarts, events: end_of_stream=1

A CURVE-protected daemon needs ``server_key`` and ``client_key_file`` (docs/security.md). A key the
daemon refuses ends listen with an error (exit 69); a handshake that fails otherwise (wrong server
key, no keys for a CURVE daemon) is retried by ZeroMQ, and one warning line on stderr says why
nothing arrives.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import BinaryIO

import soundfile as sf

from voxd.client import Subscriber
from voxd.errors import EX_CANTCREAT, EX_DATAERR, EX_USAGE, VoxdError
from voxd.wire import TOPIC_EVENT, AudioMessage, EventMessage, is_audio_topic, sample_width

__all__ = ["listen"]



# How often the receive loop wakes up to notice a stop request (ms); bounds the reaction to a signal.
_POLL_MS = 100

_SUBTYPES = {"s16le": "PCM_16", "f32le": "FLOAT"}


def listen(
    endpoint: str,
    out: str | None,
    seconds: float | None,
    topic: str = "audio",
    quiet: bool = False,
    *,
    server_key: str | None = None,
    client_key_file: str | None = None,
) -> int:
    """Receive ``topic`` from ``endpoint`` and write it to ``out``; returns the exit status (0).

    ``out``: a sound file path (WAV unless the extension names another format soundfile writes;
    16-bit PCM for ``s16le`` streams, 32-bit float for ``f32le``, both bit-exact), or None / ``-`` for
    raw interleaved PCM on stdout (for piping into a recogniser). ``seconds``: stop after this much
    audio (the output holds exactly ``round(seconds × rate)`` samples per channel); None for no limit.
    ``quiet``: no summary on stderr. ``server_key`` (the daemon's public key, Z85 or its ``.key`` file)
    and ``client_key_file`` (this client's ``.key_secret`` file): CURVE, both or neither.

    Raises :class:`VoxdError`: EX_USAGE for a bad topic or duration or only one CURVE key,
    EX_CONFIG (78) for a missing, malformed or too open key file, EX_UNAVAILABLE (69) when the daemon
    refuses this client's key, EX_CANTCREAT (73) when ``out`` cannot be written, EX_DATAERR when the
    stream's rate, channels or format change mid-stream (what was received until then is kept,
    properly closed).
    """
    if not is_audio_topic(topic):
        raise VoxdError(f"listen: {topic!r} is not an audio topic (audio or audio.<stage-name>)", EX_USAGE)
    if seconds is not None and not (seconds > 0 and math.isfinite(seconds)):
        raise VoxdError(f"listen: --seconds must be a positive number, got {seconds}", EX_USAGE)
    sink: _WavSink | _RawSink
    if out is None or out == "-":
        sink = _RawSink(sys.stdout.buffer)
    else:
        _check_writable(out)
        sink = _WavSink(out)
    tally = _Tally()
    subscriber = Subscriber(endpoint, topics=(topic, TOPIC_EVENT), server_key=server_key,
                            client_key_file=client_key_file)
    with subscriber as sub, _stop_on_signals() as stop:
        try:
            _receive(sub, sink, tally, seconds, stop)
        except KeyboardInterrupt:
            pass  # Ctrl-C where no handler of ours runs (not the main thread): a normal way to stop
        finally:
            sink.close()
            if not quiet:
                print(tally.summary(sub, out if isinstance(sink, _WavSink) else None), file=sys.stderr)
    return 0


def _receive(
    sub: Subscriber, sink: _WavSink | _RawSink, tally: _Tally, seconds: float | None, stop: _Stop
) -> None:
    """The receive loop; returns when the stream ends, the duration is reached or a stop is requested."""
    limit: int | None = None  # samples per channel, known from the first frame's rate
    warned = False  # ZeroMQ retries a failed handshake every reconnect: one line, not one per attempt
    while not stop.requested:
        msg = sub.recv(timeout_ms=_POLL_MS)
        if sub.handshake_failures and not warned:
            print(f"voxd listen: warning: {sub.last_error}", file=sys.stderr)
            warned = True
        if isinstance(msg, EventMessage):
            tally.events[msg.type] += 1
            if msg.type == "end_of_stream":
                return
            continue
        if not isinstance(msg, AudioMessage):
            continue
        tally.check_format(msg)
        n = msg.n
        if seconds is not None:
            if limit is None:
                limit = round(seconds * msg.rate)
            n = min(n, limit - tally.samples)
        if not sink.write(msg, n):
            return  # the reader of stdout went away
        tally.frames += 1
        tally.samples += n
        if limit is not None and tally.samples >= limit:
            return


@dataclass
class _Tally:
    """What was written: frames, samples per channel, the stream format, events by type."""

    frames: int = 0
    samples: int = 0
    rate: int = 0
    channels: int = 0
    format: str = ""
    events: Counter[str] = field(default_factory=Counter)

    def check_format(self, msg: AudioMessage) -> None:
        """Remember the first frame's format; a later change is an error (one output, one format)."""
        if not self.rate:
            self.rate, self.channels, self.format = msg.rate, msg.channels, msg.format
            return
        if (msg.rate, msg.channels, msg.format) != (self.rate, self.channels, self.format):
            raise VoxdError(
                f"listen: stream format changed at seq {msg.seq} from {self.channels} ch {self.rate} Hz "
                f"{self.format} to {msg.channels} ch {msg.rate} Hz {msg.format}; stopped "
                "(one output holds one format: start listen again for the new one)",
                EX_DATAERR,
            )

    def summary(self, sub: Subscriber, path: str | None) -> str:
        """One line for stderr, e.g. ``received 250 frames (5.000 s, 1 ch, 16000 Hz), 0 gaps, ...``."""
        head = f"received {_plural(self.frames, 'frame')}"
        if self.rate:
            head += f" ({self.samples / self.rate:.3f} s, {self.channels} ch, {self.rate} Hz)"
        gaps = _plural(sub.gaps, "gap") + (f" ({_plural(sub.missed, 'frame')} missed)" if sub.gaps else "")
        items = [head, gaps, _plural(sub.restarts, "restart")]
        if sub.bad:
            items.append(f"{sub.bad} malformed skipped")
        if sub.handshake_failures:
            items.append(_plural(sub.handshake_failures, "failed handshake"))
        events = " ".join(f"{kind}={count}" for kind, count in self.events.items()) or "none"
        line = ", ".join(items) + f", events: {events}"
        if path is not None and not self.rate:
            line += f"; {path} not written"
        return line


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


class _WavSink:
    """Writes frames to a sound file opened at the first frame (its rate and channels set the file's)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: sf.SoundFile | None = None

    def write(self, msg: AudioMessage, n: int) -> bool:
        if self._file is None:
            self._file = self._open(msg)
        # The wire's own int16/float32 values: no float round trip, so the file is bit-exact.
        self._file.write(msg.pcm_array()[:n])
        return True

    def _open(self, msg: AudioMessage) -> sf.SoundFile:
        ext = os.path.splitext(self.path)[1][1:].upper()
        container = ext if ext in sf.available_formats() else "WAV"
        try:
            return sf.SoundFile(
                self.path,
                "w",
                samplerate=msg.rate,
                channels=msg.channels,
                subtype=_SUBTYPES[msg.format],
                format=container,
            )
        except (RuntimeError, OSError, ValueError) as e:  # LibsndfileError is a RuntimeError
            raise VoxdError(f"cannot write {self.path}: {e}", EX_CANTCREAT) from e

    def close(self) -> None:
        if self._file is not None:
            self._file.close()  # rewrites the header with the final length


class _RawSink:
    """Writes the raw interleaved payload bytes to a binary stream (stdout), flushed per frame."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream

    def write(self, msg: AudioMessage, n: int) -> bool:
        try:
            self._stream.write(msg.pcm[: n * msg.channels * sample_width(msg.format)])
            self._stream.flush()  # a recogniser downstream wants each frame now, not a buffer later
        except BrokenPipeError:
            silence_stdout()
            return False
        return True

    def close(self) -> None:
        try:
            self._stream.flush()
        except (BrokenPipeError, ValueError):
            silence_stdout()


def silence_stdout() -> None:
    """The reader of stdout left (a closed pipe): point stdout at /dev/null, so that the interpreter's
    final flush of what is still buffered stays quiet (the recipe of the Python docs' "Note on
    SIGPIPE"); the CLI uses it for every command."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def _check_writable(path: str) -> None:
    """Fail before subscribing, not at the first frame, when the output cannot be created."""
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise VoxdError(f"cannot write {path}: it is a directory", EX_CANTCREAT)
    if not os.path.isdir(parent):
        raise VoxdError(f"cannot write {path}: directory {parent} does not exist", EX_CANTCREAT)
    if not os.access(parent, os.W_OK):
        raise VoxdError(f"cannot write {path}: directory {parent} is not writable", EX_CANTCREAT)


@dataclass
class _Stop:
    requested: bool = False


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[_Stop]:
    """Turn SIGINT/SIGTERM into a stop request the loop sees within ``_POLL_MS``.

    A flag rather than an exception, so a signal never lands between writing a frame and counting it.
    A second signal raises KeyboardInterrupt at once. Signal handlers exist only on the main thread;
    elsewhere this does nothing (and Ctrl-C arrives as KeyboardInterrupt).
    """
    stop = _Stop()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.requested:
            raise KeyboardInterrupt
        stop.requested = True

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
