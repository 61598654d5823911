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

A daemon bound beyond loopback uses CURVE (docs/security.md): give the daemon's public key and this
client's secret certificate, from ``voxd keygen``::

    Subscriber("tcp://board.local:7700", server_key="/etc/voxd/server.key",
               client_key_file="~/.config/voxd/asr.key_secret")

A client whose key is not on the daemon's allow-list is refused for good (ZeroMQ does not retry
after an authentication failure): :meth:`Subscriber.recv` raises instead of waiting forever. Other
failed handshakes (wrong server key, keys missing) are retried by ZeroMQ and deliver nothing; they
are counted in ``handshake_failures`` with the reason in ``last_error``, so a client can say why it
hears nothing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator

import zmq
from zmq.utils.monitor import recv_monitor_message

from voxd import security
from voxd.errors import EX_CONFIG, EX_UNAVAILABLE, EX_USAGE, VoxdError
from voxd.wire import TOPIC_AUDIO, TOPIC_EVENT, AudioMessage, Message, WireError, decode

__all__ = ["Subscriber", "client_curve_keys"]

#: The largest message part a Subscriber accepts (bytes): far above any real frame (1 s of 64-channel
#: f32le audio at 48 kHz is 12 MB), far below what would hurt the machine.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

_HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
)


def client_curve_keys(
    server_key: str | bytes | os.PathLike[str], client_key_file: str | os.PathLike[str]
) -> tuple[bytes, bytes, bytes]:
    """``(server public, client public, client secret)`` Z85 keys for a CURVE client.

    ``server_key``: the daemon's public key, Z85 (40 characters) or its public certificate file
    (``server.key``). ``client_key_file``: this client's secret certificate (``NAME.key_secret``),
    which must not be accessible by group or others. Raises :class:`VoxdError` (78, EX_CONFIG)
    naming the file that is missing, malformed or too open.
    """
    try:
        server = (server_key if isinstance(server_key, bytes) and security.is_z85_key(server_key)
                  else security.load_public_key(os.path.expanduser(os.fsdecode(server_key))))
        public, secret = security.load_keypair_file(os.path.expanduser(os.fspath(client_key_file)))
    except security.KeyFileError as e:
        raise VoxdError(str(e), EX_CONFIG) from None
    return server, public, secret


class Subscriber:
    """A SUB socket connected to ``endpoint``, receiving exactly the ``topics`` asked for.

    ``topics``: wire topics (``audio``, ``audio.<stage-name>``, ``event``, ``stats``). ZeroMQ filters
    by prefix, so a subscription to ``audio`` would also deliver the ``audio.<tap>`` debug streams;
    this class drops every topic not named exactly. ``timeout_ms``: default for :meth:`recv`
    (None waits forever). ``hwm``: messages buffered on this side before ZeroMQ drops.

    CURVE (both or neither; see :func:`client_curve_keys`): ``server_key``, the daemon's public key
    or its ``.key`` file; ``client_key_file``, this client's ``.key_secret`` file, whose public key
    must be on the daemon's allow-list. Raises :class:`VoxdError`: 64 (EX_USAGE) when only one is
    given, 78 (EX_CONFIG) for a bad key file, 69 (EX_UNAVAILABLE) for a bad endpoint or a libzmq
    without CURVE.

    Counters: ``received`` (messages returned), ``gaps`` (seq jumps on an audio topic), ``missed``
    (frames lost in those jumps), ``restarts`` (the ``stream`` id changed: a new daemon), ``bad``
    (malformed messages skipped; ``last_error`` says why), ``handshake_failures`` (connections the
    daemon refused or that failed their security handshake; ``last_error`` says why).
    """

    def __init__(
        self,
        endpoint: str,
        topics: Iterable[str] = (TOPIC_AUDIO, TOPIC_EVENT),
        timeout_ms: int | None = None,
        hwm: int = 1000,
        *,
        server_key: str | bytes | os.PathLike[str] | None = None,
        client_key_file: str | os.PathLike[str] | None = None,
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
        self.handshake_failures = 0
        self.last_error: str | None = None
        self._wanted = frozenset(t.encode() for t in self.topics)
        self._stream: str | None = None  # the stream id of the last message, any topic
        self._last: dict[str, tuple[str, int]] = {}  # audio topic -> (stream, seq) of its last frame
        if (server_key is None) != (client_key_file is None):
            raise VoxdError("CURVE needs both the server's public key and this client's secret key file "
                            "(server_key and client_key_file), or neither", EX_USAGE)
        curve = None
        if server_key is not None and client_key_file is not None:
            security.require_curve()
            curve = client_curve_keys(server_key, client_key_file)  # before any socket exists
        #: True when this client uses CURVE.
        self.curve = curve is not None
        self._closed = False
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.SUB)
        self._monitor: zmq.Socket[bytes] | None = None
        try:
            self._socket.setsockopt(zmq.RCVHWM, hwm)
            self._socket.setsockopt(zmq.LINGER, 0)
            # A peer that sends a message part larger than this is disconnected by ZeroMQ before the
            # part is buffered: a hostile publisher cannot make this client allocate without bound.
            self._socket.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
            if curve is not None:
                self._socket.setsockopt(zmq.CURVE_SERVERKEY, curve[0])
                self._socket.setsockopt(zmq.CURVE_PUBLICKEY, curve[1])
                self._socket.setsockopt(zmq.CURVE_SECRETKEY, curve[2])
            for topic in self._wanted:
                self._socket.setsockopt(zmq.SUBSCRIBE, topic)
            # A refused handshake is silent on the data socket; the monitor is how we learn of it.
            self._monitor = self._socket.get_monitor_socket(_HANDSHAKE_EVENTS)
            self._socket.connect(endpoint)
        except zmq.ZMQError as e:
            self._close_sockets()
            raise VoxdError(f"endpoint {endpoint}: {e}", EX_UNAVAILABLE) from e
        self._poller = zmq.Poller()
        self._poller.register(self._socket, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)

    @property
    def counters(self) -> dict[str, int]:
        """``received``, ``gaps``, ``missed``, ``restarts``, ``bad`` as a dict."""
        return {
            "received": self.received,
            "gaps": self.gaps,
            "missed": self.missed,
            "restarts": self.restarts,
            "bad": self.bad,
            "handshake_failures": self.handshake_failures,
        }

    def recv(self, timeout_ms: int | None = None) -> Message | None:
        """The next decoded message, or None when nothing arrived within ``timeout_ms``
        (``self.timeout_ms`` when None; waits forever when both are None).

        Raises :class:`VoxdError` (69, EX_UNAVAILABLE) when the daemon refused this client's key:
        nothing will ever arrive."""
        if self._closed:
            raise ValueError("recv() on a closed Subscriber")
        timeout = self.timeout_ms if timeout_ms is None else timeout_ms
        deadline = None if timeout is None else time.monotonic() + timeout / 1000
        while True:
            wait = None if deadline is None else max(0, round((deadline - time.monotonic()) * 1000))
            ready = dict(self._poller.poll(wait))
            if self._monitor in ready:
                self._read_monitor()
            if self._socket not in ready:
                if ready and (deadline is None or time.monotonic() < deadline):
                    continue  # only a monitor event: keep waiting for data
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
            except Exception as e:  # a decode bug must not take it down either: skip, count, say why
                self.bad += 1
                self.last_error = f"undecodable message ({type(e).__name__}: {e})"[:200]
                continue
            self._track(msg)
            self.received += 1
            return msg

    def _read_monitor(self) -> None:
        """Count handshake failures and say why in ``last_error``; raise on a refused key."""
        assert self._monitor is not None
        while self._monitor.poll(0, zmq.POLLIN):
            event = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            self.handshake_failures += 1
            if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                # libzmq drops the connection for good after a ZAP refusal: waiting is pointless.
                self.last_error = (f"{self.endpoint}: the server refused this client's key (ZAP status "
                                   f"{int(event['value'])}): its public key is not on the allow-list")
                raise VoxdError(self.last_error, EX_UNAVAILABLE)
            if self.curve:
                self.last_error = (f"{self.endpoint}: security handshake failed: wrong server public key, "
                                   "or the server does not use CURVE")
            else:
                self.last_error = (f"{self.endpoint}: security handshake failed: the server probably "
                                   "requires CURVE keys (server key and client key file)")

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
        self._close_sockets()

    def _close_sockets(self) -> None:
        if self._monitor is not None:
            self._socket.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None
        self._socket.close(linger=0)
        # destroy, not term: term() waits for every socket of the context to close, and one left open
        # (an interrupt inside the monitor's teardown) would hang the exit forever
        self._context.destroy(linger=0)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._closed

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
