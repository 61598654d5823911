"""The ZeroMQ publisher: puts encoded frames, events and stats on the wire, never blocking.

One XPUB socket is bound to every configured endpoint. To subscribers it is an ordinary PUB socket;
XPUB is used so the daemon can see subscriptions arrive (``wait_for_subscriber``, and ``subscriptions``
to know whether anyone listens to a debug tap).

Threading: a ZeroMQ socket is not thread-safe. Create, use and close a :class:`Publisher` on ONE
thread, the worker thread that runs the chain. Other threads hand it events through the worker.

Security: with ``curve_secret_key`` the socket is a CURVE server (encrypted, and only clients that
know the daemon's public key can even complete a handshake), and a ZAP handler, a
:class:`zmq.auth.thread.ThreadAuthenticator` on the publisher's own context, admits only the
client public keys in ``curve_allowed_clients``. Without keys, an endpoint reachable from other
machines is refused unless ``insecure=True`` (then it is bound with a warning in the log), so a caller
that forgets the keys fails closed. See docs/security.md.

Back-pressure: there is none, on purpose. Each subscriber has a send queue of ``hwm`` messages; when a
slow subscriber's queue is full, its messages are dropped (it sees a ``seq`` gap) and the worker goes on
at full speed. Sends are non-blocking, so even a misbehaving transport cannot stall the chain.

Local sockets: an ``ipc://`` file socket is created with an explicit mode (``ipc_mode``, default 0660:
owner and group; the process umask does not decide it) and removed when the publisher closes. An
abstract ``ipc://@name`` has no file and so no permissions at all: any local user could subscribe, so it
is refused without CURVE (or ``insecure``), like a network endpoint (:func:`voxd.security.is_local_endpoint`).

Reconfiguring (a reload, :meth:`Publisher.reconfigure`): endpoints are bound and unbound on the running
socket (a new one is bound before anything is given up, so an endpoint already in use changes nothing),
the format and high-water mark change in place (the latter for subscribers that connect afterwards), and
a new CURVE allow-list replaces the old; when it drops a key, every endpoint is rebound, which ends all
connections: the clients still allowed reconnect and authenticate again (a few frames missed), the
removed one is refused. Turning CURVE on or off, or another server key, needs a new socket.
"""

from __future__ import annotations

import logging
import math
import os
import time
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import zmq
from zmq.auth.thread import ThreadAuthenticator

from voxd import security
from voxd.errors import EX_CONFIG, EX_UNAVAILABLE, VoxdError
from voxd.wire import TOPIC_AUDIO, encode_audio, encode_event, encode_stats, sample_width

# Subscription messages queue up inside the XPUB socket until read; reading them every few dozen sends
# keeps that queue bounded on a daemon that runs for months while clients come and go.
_DRAIN_EVERY = 64

# Distinct refused client keys remembered for logging each one once: a refused client restarted by its
# supervisor comes back again and again, and a log line per attempt would flood the journal.
_REFUSED_LOG_MAX = 256

#: Largest message a subscriber may send us (bytes): subscriptions are short topic prefixes. ZeroMQ
#: disconnects a peer that sends more, before buffering it.
_MAX_INBOUND_BYTES = 4096

#: Default mode of ipc:// socket files: owner and group may connect (the unit's group voxd).
IPC_MODE = 0o660

if TYPE_CHECKING:
    from voxd.config.model import OutputConfig

log = logging.getLogger(__name__)


class _AllowList:
    """The ZAP credentials provider: admits the Z85 client keys it holds, nothing else.

    ``callback`` runs on the authenticator's thread; the key set is replaced whole (one reference
    assignment) by :meth:`replace`, so the thread always sees a complete old or new list.
    """

    def __init__(self, keys: Iterable[bytes]) -> None:
        self.keys = frozenset(keys)
        self._refused: set[bytes] = set()  # touched by the authenticator's thread only

    def replace(self, keys: Iterable[bytes]) -> None:
        """Admit exactly ``keys`` from now on (any thread)."""
        self.keys = frozenset(keys)

    def callback(self, domain: str, key: bytes) -> bool:
        """pyzmq's credentials-provider hook: True admits the client with Z85 public ``key``."""
        if key in self.keys:
            return True
        if key not in self._refused and len(self._refused) < _REFUSED_LOG_MAX:
            self._refused.add(key)
            log.warning("refused a subscriber with CURVE public key %s: not on the allow-list",
                        key.decode("ascii", "replace"))
        return False


class Publisher:
    """Publishes wire-format v1 messages on one XPUB socket bound to ``endpoints``.

    ``endpoints``: ZeroMQ endpoints to bind (``tcp://127.0.0.1:5556``, ``ipc:///run/voxd/audio``; the
    parent directory of an ``ipc://`` path is created if missing; ``tcp://127.0.0.1:*`` picks a free
    port, see ``endpoints``). ``fmt``: ``s16le`` or ``f32le``. ``hwm``: messages queued per subscriber
    before that subscriber loses messages. ``stream_id``: the ``stream`` header value (a fresh random
    id when None, so every daemon start is a new stream).

    CURVE (all keys Z85, as in ZeroMQ certificate files; see :mod:`voxd.security`):
    ``curve_secret_key``: the daemon's secret key; turns CURVE on for every endpoint.
    ``curve_public_key``: its public key (derived from the secret one when None; logged so that
    clients can be given it). ``curve_allowed_clients``: the client public keys admitted; any other
    client is refused at the handshake and receives nothing. ``insecure``: allow endpoints other than
    loopback, ``ipc://`` and ``inproc://`` without CURVE (a warning per endpoint is logged).
    :meth:`from_config` fills all of these from the ``output`` section.

    Raises :class:`VoxdError`: exit status 69 (EX_UNAVAILABLE) when an endpoint cannot be bound or
    libzmq lacks CURVE; 78 (EX_CONFIG) for a non-local endpoint without keys or ``insecure``.
    Must be created, used and closed on a single thread (see the module docstring).
    """

    def __init__(
        self,
        endpoints: list[str],
        fmt: str = "s16le",
        hwm: int = 1000,
        stream_id: str | None = None,
        *,
        curve_secret_key: bytes | None = None,
        curve_public_key: bytes | None = None,
        curve_allowed_clients: Iterable[bytes] = (),
        insecure: bool = False,
        ipc_mode: int = IPC_MODE,
    ) -> None:
        sample_width(fmt)  # fail on an unknown format before binding anything
        if curve_secret_key is None:
            open_eps = [ep for ep in endpoints if not security.is_local_endpoint(ep)]
            if open_eps and not insecure:
                raise VoxdError(f"output endpoint {open_eps[0]} is not loopback, ipc:// or inproc://: "
                                "binding it needs CURVE keys (output.curve) or output.insecure: true",
                                EX_CONFIG)
            for ep in open_eps:
                log.warning("output endpoint %s has no CURVE keys (output.insecure: true): anyone who can "
                            "reach it can listen to the audio", ep)
        else:
            security.require_curve()
        self.fmt = fmt
        self.stream = stream_id if stream_id is not None else uuid.uuid4().hex[:12]
        #: Messages handed to ZeroMQ: audio frames (all audio topics), payload bytes, events, stats;
        #: ``dropped`` counts sends refused outright (not the per-subscriber high-water-mark drops,
        #: which ZeroMQ does silently and subscribers see as seq gaps).
        self.counters: dict[str, int] = {
            "audio_frames": 0,
            "audio_bytes": 0,
            "events": 0,
            "stats": 0,
            "dropped": 0,
        }
        #: The endpoints actually bound (a ``*`` port resolved to the chosen one), in order.
        self.endpoints: list[str] = []
        self._bound: dict[str, str] = {}  # endpoint as configured -> as bound
        self._ipc_files: dict[str, tuple[str, int, int]] = {}  # bound ipc endpoint -> (path, dev, inode)
        self._ipc_mode = ipc_mode
        self._insecure = insecure
        self._secret: bytes | None = curve_secret_key
        self._subscriptions: set[bytes] = set()
        self._sends = 0
        self._closed = False
        #: The daemon's CURVE public key (Z85) when CURVE is on, else None.
        self.curve_public_key: bytes | None = None
        self._allow: _AllowList | None = None
        self._auth: ThreadAuthenticator | None = None
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.XPUB)
        try:
            self._socket.setsockopt(zmq.SNDHWM, hwm)
            self._socket.setsockopt(zmq.LINGER, 0)  # until close() says how long to flush
            self._socket.setsockopt(zmq.MAXMSGSIZE, _MAX_INBOUND_BYTES)
            if curve_secret_key is not None:
                self._setup_curve(curve_secret_key, curve_public_key, curve_allowed_clients)
            for ep in endpoints:
                self._bound[ep] = self._bind(ep)
                self.endpoints.append(self._bound[ep])
        except BaseException:
            self._socket.close(linger=0)
            self._stop_auth()
            self._context.term()
            self._remove_ipc_files()
            raise
        if self.curve_public_key is not None:
            assert self._allow is not None
            log.info("CURVE on: server public key %s, %d allowed client key(s)",
                     self.curve_public_key.decode("ascii"), len(self._allow.keys))

    @classmethod
    def from_config(cls, output: OutputConfig, stream_id: str | None = None) -> Publisher:
        """A publisher for the ``output`` config section: endpoints, format, hwm, CURVE keys (as read
        when the config was validated) and ``insecure``."""
        kwargs: dict[str, Any] = {"insecure": output.insecure}
        if output.curve is not None:
            keys = output.curve.keys
            kwargs.update(curve_secret_key=keys.secret_key, curve_public_key=keys.public_key,
                          curve_allowed_clients=keys.allowed_clients)
        return cls(list(output.endpoints), fmt=output.format, hwm=output.hwm, stream_id=stream_id,
                   ipc_mode=output.ipc_mode, **kwargs)

    def reconfigure(self, output: OutputConfig) -> bool:
        """Apply a changed ``output`` section to this running socket (see the module docstring).

        Returns False, changing nothing, when it needs a new socket (CURVE turned on or off, another
        server key). Raises :class:`VoxdError` (69) when a new endpoint cannot be bound, with every
        setting as it was.
        """
        keys = output.curve.keys if output.curve is not None else None
        if (keys is None) != (self._allow is None) or (keys is not None and keys.secret_key != self._secret):
            return False
        sample_width(output.format)
        wanted = list(output.endpoints)
        added = [ep for ep in wanted if ep not in self._bound]
        removed = [ep for ep in self._bound if ep not in wanted]
        if keys is None and not output.insecure:
            open_eps = [ep for ep in added if not security.is_local_endpoint(ep)]
            if open_eps:
                raise VoxdError(f"output endpoint {open_eps[0]} is not loopback, ipc:// or inproc://: "
                                "binding it needs CURVE keys (output.curve) or output.insecure: true",
                                EX_CONFIG)
        self._ipc_mode = output.ipc_mode
        done: list[str] = []
        try:
            for ep in added:  # new endpoints first: if one fails, nothing has been given up yet
                self._bound[ep] = self._bind(ep)
                done.append(ep)
        except VoxdError:
            for ep in done:
                self._unbind(self._bound.pop(ep))
            raise
        for ep in removed:
            self._unbind(self._bound.pop(ep))
        self.endpoints = [self._bound[ep] for ep in wanted]
        if keys is None:
            for ep in added:
                if not security.is_local_endpoint(ep):
                    log.warning("output endpoint %s has no CURVE keys (output.insecure: true): anyone who "
                                "can reach it can listen to the audio", ep)
        self._insecure = output.insecure
        self.fmt = output.format
        self._socket.setsockopt(zmq.SNDHWM, output.hwm)  # pipes made from now on (new connections)
        if keys is not None:
            assert self._allow is not None
            revoked = self._allow.keys - keys.allowed_clients
            self._allow.replace(keys.allowed_clients)
            if revoked:
                # ZAP asks only at the handshake: end every connection, so that each client has to pass
                # the new allow-list to come back
                log.info("%d client key(s) removed from the allow-list: every subscriber reconnects",
                         len(revoked))
                for ep in list(self.endpoints):
                    self._unbind(ep)
                    try:
                        self._rebind(ep)
                    except VoxdError:
                        # another process took it in the instant it was free: this socket no longer
                        # serves what the config says; close it (the daemon then stops, exit 69)
                        self.close(linger_ms=0)
                        raise
        return True

    def _rebind(self, bound: str, within_s: float = 2.0) -> None:
        """Bind ``bound`` again right after unbinding it. libzmq closes a listener asynchronously (on its
        I/O thread), so the port is busy for a moment: retry for up to ``within_s``."""
        deadline = time.monotonic() + within_s
        while True:
            try:
                self._bind(bound)
                return
            except VoxdError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.005)

    def _setup_curve(self, secret: bytes, public: bytes | None, allowed: Iterable[bytes]) -> None:
        """Make the socket a CURVE server with a ZAP allow-list; before any bind, so that no
        connection is ever accepted without them."""
        if public is None:
            public = zmq.curve_public(secret)
        self._allow = _AllowList(allowed)
        # libzmq asks the ZAP handler of the socket's own context: the authenticator must live on
        # ours, and be running before bind. Without a handler, CURVE would admit any client that
        # knows the server's public key.
        self._auth = ThreadAuthenticator(self._context, log=logging.getLogger(f"{__name__}.zap"))
        self._auth.start()
        self._auth.configure_curve_callback(domain="*", credentials_provider=self._allow)
        self._socket.setsockopt(zmq.CURVE_SERVER, 1)
        self._socket.setsockopt(zmq.CURVE_SECRETKEY, secret)
        self._socket.setsockopt(zmq.CURVE_PUBLICKEY, public)
        self.curve_public_key = public

    def set_allowed_clients(self, keys: Iterable[bytes]) -> None:
        """Replace the allow-list (Z85 client public keys) while running, e.g. on a reload.

        It applies to new connections: a subscriber already connected stays connected. Raises
        ValueError when CURVE is off.
        """
        if self._allow is None:
            raise ValueError("CURVE is off: there is no allow-list to replace")
        self._allow.replace(keys)

    def _stop_auth(self) -> None:
        """Stop the ZAP thread (joins it): a reloading daemon must not leak one per publisher."""
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    def _bind(self, ep: str) -> str:
        """Bind ``ep``; returns the endpoint as bound. An ``ipc://`` file is created with ``ipc_mode``."""
        path = ep[len("ipc://") :] if ep.startswith("ipc://") else ""
        # '@name' is Linux's abstract namespace: no file, no directory, no mode.
        is_file = bool(path) and not path.startswith("@") and path != "*"
        if is_file:
            parent = os.path.dirname(path)
            if parent:
                try:
                    os.makedirs(parent, exist_ok=True)
                except OSError as e:
                    raise VoxdError(
                        f"output endpoint {ep}: cannot create {parent}: {e.strerror}", EX_UNAVAILABLE
                    ) from e
            if self._ipc_mode & 0o007:
                log.warning("output endpoint %s: ipc_mode %04o lets every local user connect", ep,
                            self._ipc_mode)
        # bind() creates the socket file with 0777 & ~umask: for that moment the umask is the complement
        # of the wanted mode (so that no one else can connect before the chmod below), then restored
        umask = os.umask(0o777 & ~self._ipc_mode) if is_file else None
        try:
            self._socket.bind(ep)
        except zmq.ZMQError as e:
            raise VoxdError(f"output endpoint {ep}: {e}", EX_UNAVAILABLE) from e
        finally:
            if umask is not None:
                os.umask(umask)
        last = self._socket.getsockopt(zmq.LAST_ENDPOINT)
        bound = last.decode() if isinstance(last, bytes) and last else ep
        if is_file:
            try:
                os.chmod(path, self._ipc_mode)  # exact, whatever the umask left
                st = os.stat(path)
                self._ipc_files[bound] = (path, st.st_dev, st.st_ino)
            except OSError as e:
                self._socket.unbind(bound)
                raise VoxdError(f"output endpoint {ep}: cannot set its mode: {e.strerror}",
                                EX_UNAVAILABLE) from e
        return bound

    def _unbind(self, bound: str) -> None:
        """Unbind an endpoint (as bound); ends its connections and removes its ipc file."""
        try:
            self._socket.unbind(bound)
        except zmq.ZMQError as e:
            log.warning("unbinding %s: %s", bound, e)
        self._remove_ipc_files([bound])

    def _remove_ipc_files(self, which: Iterable[str] | None = None) -> None:
        """Remove the ipc socket files we created (libzmq leaves them behind), if they are still ours
        (the same inode: another process may have taken the path since)."""
        for bound in list(self._ipc_files if which is None else which):
            entry = self._ipc_files.pop(bound, None)
            if entry is None:
                continue
            path, dev, ino = entry
            try:
                st = os.stat(path)
                if (st.st_dev, st.st_ino) == (dev, ino):
                    os.unlink(path)
            except OSError:
                pass

    # ------------------------------------------------------------------------------------ sending

    def send_audio(
        self,
        samples: np.ndarray,
        *,
        seq: int,
        pts: int,
        t: float,
        rate: int,
        speech: bool = False,
        side: dict[str, Any] | None = None,
        topic: str = TOPIC_AUDIO,
    ) -> bool:
        """Publish one audio frame: ``samples`` float32 ``(channels, n)``, ``seq`` (+1 per frame of
        ``topic``), ``pts`` (first sample's index since stream start), ``t`` (its capture time, Unix s),
        ``rate`` (Hz), ``speech`` (False when unknown), ``side`` (frame side values; scalars travel).
        Returns False if ZeroMQ refused the message (counted in ``counters["dropped"]``).
        """
        parts = encode_audio(
            samples,
            stream=self.stream,
            seq=seq,
            pts=pts,
            t=t,
            rate=rate,
            fmt=self.fmt,
            speech=speech,
            side=side,
            topic=topic,
        )
        if not self._send(parts):
            return False
        self.counters["audio_frames"] += 1
        self.counters["audio_bytes"] += len(parts[2])
        return True

    def send_event(self, type: str, seq: int | None = None, **fields: Any) -> bool:
        """Publish an event (``speech_start``, ``end_of_stream``, ...); ``seq``: the audio seq it refers
        to; ``t`` (Unix s) defaults to now; other ``fields`` travel as JSON. Returns False if refused."""
        sent = self._send(encode_event(type, stream=self.stream, seq=seq, **fields))
        self.counters["events"] += int(sent)
        return sent

    def send_stats(self, **fields: Any) -> bool:
        """Publish periodic counters (JSON values); ``t`` defaults to now. Returns False if refused."""
        self._drain()
        sent = self._send(encode_stats(stream=self.stream, **fields))
        self.counters["stats"] += int(sent)
        return sent

    def _send(self, parts: list[bytes]) -> bool:
        self._sends += 1
        if self._sends % _DRAIN_EVERY == 0:
            self._drain()
        try:
            # XPUB drops at the high-water mark rather than blocking; NOBLOCK makes sure of it.
            self._socket.send_multipart(parts, flags=zmq.NOBLOCK)
        except zmq.Again:
            self.counters["dropped"] += 1
            return False
        return True

    # ------------------------------------------------------------------------------- subscriptions

    @property
    def subscriptions(self) -> frozenset[str]:
        """Topic prefixes that at least one subscriber has subscribed to (as of the last read)."""
        return frozenset(s.decode("utf-8", "replace") for s in self._subscriptions)

    def wait_for_subscriber(self, timeout_s: float, topics: Iterable[str] = ()) -> bool:
        """Wait up to ``timeout_s`` seconds for a subscription; True once any subscriber subscribed.

        With ``topics``, wait until every one of them is covered by some subscription (a subscriber
        subscribes topic by topic, so this avoids sending an ``event`` before its subscription landed).
        Messages published after this returns True reach that subscriber (no slow-joiner loss).
        """
        wanted = [t.encode() for t in topics]
        deadline = time.monotonic() + timeout_s
        while True:
            self._drain()
            if self._subscriptions and all(any(w.startswith(s) for s in self._subscriptions) for w in wanted):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._socket.poll(max(1, math.ceil(remaining * 1000)), zmq.POLLIN)

    def _drain(self) -> None:
        """Read the pending (un)subscription messages: byte 0 is 1/0, the rest is the topic prefix."""
        while True:
            try:
                msg = self._socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            # A non-verbose XPUB reports only a topic's first subscribe and last unsubscribe, so a set
            # of topics is exact.
            if msg[:1] == b"\x01":
                self._subscriptions.add(msg[1:])
            elif msg[:1] == b"\x00":
                self._subscriptions.discard(msg[1:])

    # ------------------------------------------------------------------------------------ closing

    def close(self, linger_ms: int = 2000) -> None:
        """Flush what is queued (for at most ``linger_ms``), then close the socket. Idempotent."""
        if self._closed:
            return
        self._closed = True
        # Socket first: once it is closed no new handshake starts, so stopping the ZAP handler
        # after it leaves no moment where a client could be admitted unchecked.
        self._socket.close(linger=linger_ms)
        self._stop_auth()
        self._context.term()
        self._remove_ipc_files()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._closed

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
