"""The client library: subscribe to a voxd stream and get decoded messages, with losses made visible.

Usage::

    with Subscriber("tcp://127.0.0.1:5556") as sub:
        for msg in sub:
            if isinstance(msg, AudioMessage):
                if msg.restart:      # the daemon restarted: reset the recogniser
                    ...
                if msg.gap:          # msg.gap frames were lost just before this one
                    ...
                feed(msg.samples)    # float32 (channels, n)

A Subscriber, like any ZeroMQ socket, belongs to the thread that created it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

import zmq

from voxd.errors import EX_UNAVAILABLE, VoxdError
from voxd.wire import TOPIC_AUDIO, TOPIC_EVENT, AudioMessage, Message, WireError, decode

__all__ = ["Subscriber"]


class Subscriber:
    """A SUB socket connected to ``endpoint``, receiving exactly the ``topics`` asked for.

    ``topics``: wire topics (``audio``, ``audio.<stage-name>``, ``event``, ``stats``). ZeroMQ filters
    by prefix, so a subscription to ``audio`` would also deliver the ``audio.<tap>`` debug streams;
    this class drops every topic not named exactly. ``timeout_ms``: default for :meth:`recv`
    (None waits forever). ``hwm``: messages buffered on this side before ZeroMQ drops.

    Counters: ``received`` (messages returned), ``gaps`` (seq jumps on an audio topic), ``missed``
    (frames lost in those jumps), ``restarts`` (the ``stream`` id changed: a new daemon), ``bad``
    (malformed messages skipped; ``last_error`` says why).
    """

    def __init__(
        self,
        endpoint: str,
        topics: Iterable[str] = (TOPIC_AUDIO, TOPIC_EVENT),
        timeout_ms: int | None = None,
        hwm: int = 1000,
    ) -> None:
        self.endpoint = endpoint
        self.topics = tuple(topics)
        if not self.topics:
            raise ValueError("subscribe to at least one topic")
        self.timeout_ms = timeout_ms
        self.received = 0
        self.gaps = 0
        self.missed = 0
        self.restarts = 0
        self.bad = 0
        self.last_error: str | None = None
        self._wanted = frozenset(t.encode() for t in self.topics)
        self._stream: str | None = None  # the stream id of the last message, any topic
        self._last: dict[str, tuple[str, int]] = {}  # audio topic -> (stream, seq) of its last frame
        self._closed = False
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.SUB)
        try:
            self._socket.setsockopt(zmq.RCVHWM, hwm)
            self._socket.setsockopt(zmq.LINGER, 0)
            for topic in self._wanted:
                self._socket.setsockopt(zmq.SUBSCRIBE, topic)
            self._socket.connect(endpoint)
        except zmq.ZMQError as e:
            self._socket.close(linger=0)
            self._context.term()
            raise VoxdError(f"endpoint {endpoint}: {e}", EX_UNAVAILABLE) from e

    @property
    def counters(self) -> dict[str, int]:
        """``received``, ``gaps``, ``missed``, ``restarts``, ``bad`` as a dict."""
        return {
            "received": self.received,
            "gaps": self.gaps,
            "missed": self.missed,
            "restarts": self.restarts,
            "bad": self.bad,
        }

    def recv(self, timeout_ms: int | None = None) -> Message | None:
        """The next decoded message, or None when nothing arrived within ``timeout_ms``
        (``self.timeout_ms`` when None; waits forever when both are None)."""
        if self._closed:
            raise ValueError("recv() on a closed Subscriber")
        timeout = self.timeout_ms if timeout_ms is None else timeout_ms
        deadline = None if timeout is None else time.monotonic() + timeout / 1000
        while True:
            wait = None if deadline is None else max(0, round((deadline - time.monotonic()) * 1000))
            if not self._socket.poll(wait, zmq.POLLIN):
                return None
            parts = self._socket.recv_multipart(zmq.NOBLOCK)
            if parts[0] not in self._wanted:  # a prefix match we did not ask for (audio.<tap>)
                continue
            try:
                msg = decode(parts)
            except WireError as e:
                # A corrupt or foreign message must not take a long-running client down.
                self.bad += 1
                self.last_error = str(e)
                continue
            self._track(msg)
            self.received += 1
            return msg

    def _track(self, msg: Message) -> None:
        """Detect restarts (new stream id) and gaps (seq jumps, per audio topic)."""
        if self._stream is not None and msg.stream != self._stream:
            self.restarts += 1
        self._stream = msg.stream
        if not isinstance(msg, AudioMessage):
            return
        last = self._last.get(msg.topic)
        if last is not None:
            last_stream, last_seq = last
            if msg.stream != last_stream:
                msg.restart = True  # seq starts over with the new stream: not a gap
            elif msg.seq > last_seq + 1:
                msg.gap = msg.seq - last_seq - 1
                self.gaps += 1
                self.missed += msg.gap
            # seq <= last_seq on the same stream cannot come from one daemon; resynchronise quietly.
        self._last[msg.topic] = (msg.stream, msg.seq)

    def __iter__(self) -> Iterator[Message]:
        """Yield decoded messages until :meth:`close` (called from the loop body, same thread)."""
        while not self._closed:
            msg = self.recv()
            if msg is not None:
                yield msg

    def close(self) -> None:
        """Close the socket; queued messages are discarded. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._socket.close(linger=0)
        self._context.term()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._closed

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
