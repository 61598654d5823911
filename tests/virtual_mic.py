"""A real PortAudio input device for tests: a private PulseAudio server whose pipe source is a FIFO.

Samples written to the FIFO come out of PortAudio's ALSA host API, through the ALSA ``pulse`` plugin
(libasound2-plugins), bit for bit::

    feeder thread -> FIFO -> module-pipe-source "voxdmic" (default source) -> PulseAudio native socket
      -> ALSA "pulse" PCM -> PortAudio (ALSA host API) -> PyAudio

Each :class:`VirtualMic` runs its own ``pulseaudio`` process, isolated from any user or system server:
its own HOME, XDG/PULSE runtime and state directories and native socket under ``workdir``, no D-Bus,
and clients that never autospawn. A process reaches it only through :attr:`VirtualMic.env`, which must
be in ``os.environ`` *before* ``pyaudio.PyAudio()`` is created (PortAudio reads the ALSA configuration
and enumerates devices at initialisation), or be given to a subprocess.

What PortAudio shows with that environment (PortAudio V19.6.0-devel, alsa-plugins 1.2.7, PulseAudio
16.1, Debian 12): two ALSA devices, ``"pulse"`` and ``"default"``, each with 32 input and 32 output
channels and a default rate of 44100 Hz, whatever the source is. Both are the PulseAudio ALSA plugin,
which accepts any channel count and rate and converts (remaps/resamples) to the source's, so only
opening the source's own channel count and rate is bit-exact. ``is_format_supported`` says yes to 1..32
channels at any rate from 8 to 192 kHz (33 channels: ``ValueError('Invalid number of channels', -9998)``).
Select it with :attr:`device_name` (``"pulse"``). With no server, or without this environment, PortAudio
lists no device at all (``get_device_count() == 0`` on a machine without a sound card).
A buffer reaches a PyAudio callback about 0.5 ms after it is written to the FIFO (10 ms buffers).

Facts this module is built on, all checked on this machine kind:

* The pipe source's ``channel_map`` must be the ALSA order that the ALSA plugin asks for
  (:func:`alsa_channel_map`); any other map makes PulseAudio remap by position, and channels come out
  swapped, mixed or zero.
* module-pipe-source aborts the server when the frame size does not divide 4096 bytes (3, 5, 6, 7...
  channels): such a mic runs a padded source (:func:`source_layout`), invisible to clients.
* ``module-pipe-source`` creates the FIFO itself and fails if the path exists, and it only removes it on
  a clean exit: a stale FIFO (after :meth:`VirtualMic.kill`) is removed before every start.
* The source delivers data only as it is written: nothing (not silence) reaches PortAudio while nobody
  writes (a callback stream stays active and is simply not called), and PortAudio hands out whole
  buffers only, so the payload's last partial buffer arrives only when more data follows, hence
  ``then_silence``. Data written while no stream is open is read and dropped, never delivered later.
* SIGKILLing the server (:meth:`VirtualMic.kill`) ends a blocking ``read`` with ``OSError(-9999,
  'Unanticipated host error')`` and a callback stream with ``is_active() == False``, within a few ms.
* PulseAudio prints a warning when run as root and works.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

#: Positions in the order the ALSA ``pulse`` plugin asks for (PulseAudio's PA_CHANNEL_MAP_ALSA).
_ALSA_POSITIONS = ("front-left", "front-right", "rear-left", "rear-right", "front-center", "lfe",
                   "side-left", "side-right")
#: Channel counts PA_CHANNEL_MAP_ALSA defines; other counts are the largest of these below plus aux.
_ALSA_COUNTS = (8, 6, 5, 4, 2)

#: Most channels the ALSA pulse plugin (and PulseAudio) accept; PortAudio reports it as maxInputChannels.
_MAX_CHANNELS = 32
#: Highest sample rate PulseAudio accepts (PA_RATE_MAX).
_MAX_RATE = 384000
#: ramp_pattern's period in frames (its counter channel runs 1..32767).
_RAMP_PERIOD = 32767
#: Longest unix socket path (sun_path is 108 bytes including the terminating NUL).
_MAX_SOCKET_PATH = 107


class VirtualMicError(RuntimeError):
    """The private PulseAudio server could not be started (the message carries its log)."""


def alsa_channel_map(channels: int) -> list[str]:
    """Channel positions, in ALSA order, that the ALSA pulse plugin requests for ``channels`` channels.

    This is ``pa_channel_map_init_extend(.., PA_CHANNEL_MAP_ALSA)``: mono, or the largest of the 2, 4,
    5, 6 and 8 channel ALSA layouts that fits, then ``aux0``, ``aux1``... A source whose channels carry
    these positions is passed to the plugin's stream without remapping.
    """
    if not 1 <= channels <= _MAX_CHANNELS:
        raise ValueError(f"channels must be 1..{_MAX_CHANNELS} (the ALSA pulse plugin's limit), "
                         f"not {channels}")
    if channels == 1:
        return ["mono"]
    base = next(c for c in _ALSA_COUNTS if c <= channels)
    return [*_ALSA_POSITIONS[:base], *(f"aux{i}" for i in range(channels - base))]


def source_layout(channels: int) -> tuple[int, str]:
    """The pipe source's channel count and channel map that present ``channels`` channels bit-exactly.

    module-pipe-source (PulseAudio 16.1) reads the FIFO into PIPE_BUF (4096 byte) blocks and aborts the
    whole server (``Assertion 'pa_frame_aligned(...)' failed``) on the first block that ends inside a
    frame, i.e. whenever the frame size (2 x channels bytes) does not divide 4096: 3, 5, 6, 7, 9...
    channels. Such a source gets spare channels up to the next power of two, on aux positions that the
    plugin's stream does not ask for; with remixing off (see daemon.conf) PulseAudio then drops them
    and copies the requested channels as they are.
    """
    positions = alsa_channel_map(channels)
    padded = 1 << (channels - 1).bit_length()
    if padded != channels:
        used = sum(p.startswith("aux") for p in positions)
        positions += [f"aux{used + i}" for i in range(padded - channels)]
    return padded, ",".join(positions)


def ramp_pattern(n: int, channels: int, start: int = 0) -> np.ndarray:
    """Recognisable int16 test samples ``(n, channels)``: where they start and whether any went missing,
    got swapped or altered shows in every frame.

    Channel 0 counts frames, ``(start + i) % 32767 + 1`` (never 0, so leading silence is told apart);
    channel 1 is a tone with a 31-frame period (516 Hz at 16 kHz); channel c >= 2 is the constant
    ``-1000 * c`` (``+1000 * c`` for odd c), so a swapped or zeroed channel shows. The pattern repeats
    every 32767 frames (31 divides it): frame ``k`` of a stream is ``ramp_pattern(1, ch, k % 32767)``,
    and ``ramp_pattern(n, ch, got[0, 0] - 1)`` is what should follow a received frame ``got[0]``.
    """
    i = np.arange(start, start + n) % _RAMP_PERIOD
    out = np.empty((n, channels), np.int16)
    out[:, 0] = i + 1
    if channels > 1:
        out[:, 1] = np.rint(12000 * np.sin(2 * np.pi * i / 31)).astype(np.int16)
    for c in range(2, channels):
        out[:, c] = 1000 * c * (1 if c % 2 else -1)
    return out


def ramp_source(channels: int, start: int = 0) -> Callable[[int], np.ndarray]:
    """An endless :func:`ramp_pattern` for :meth:`VirtualMic.start_feeding` (each call continues it)."""
    pos = start

    def take(n: int) -> np.ndarray:
        nonlocal pos
        out = ramp_pattern(n, channels, pos)
        pos += n
        return out

    return take


def find_ramp(received: np.ndarray, start: int = 0) -> int:
    """Index of the first frame of :func:`ramp_pattern` ``(.., start)`` in ``received`` (what a stream
    read), skipping whatever came before it; -1 when it is not there."""
    first = ramp_pattern(1, received.shape[1], start)[0]
    hits = np.flatnonzero(np.all(received == first, axis=1))
    return int(hits[0]) if len(hits) else -1


def _reap(proc: subprocess.Popen[bytes]) -> None:
    """Kill a server left running by a VirtualMic that was garbage-collected without stop()."""
    if proc.poll() is None:
        proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


class VirtualMic:
    """A private PulseAudio server with a pipe source ``name`` (``channels`` x ``rate`` Hz, s16le).

    Use as a context manager (or call :meth:`start` / :meth:`stop`). Feed it with :meth:`write` or a
    real-time feeder thread (:meth:`start_feeding`); :meth:`kill` makes the device vanish (SIGKILL) and
    :meth:`start` brings it back on the same socket path.

    All files live under ``workdir`` (created if missing): ``native`` (the server socket),
    ``<name>.fifo``, ``pulseaudio.log``, ``home/``, ``runtime/``, ``state/``. The socket path must fit a
    unix socket address (107 bytes); :func:`virtual_mics` picks a short directory when needed.
    """

    #: PortAudio's name of this server's device (ALSA host API): the ALSA ``pulse`` plugin PCM. Select it
    #: by this name (or as a substring); its stream comes from the pipe source.
    device_name: ClassVar[str] = "pulse"
    #: The other device PortAudio lists, ALSA ``default``, pointed at the same plugin (by the ALSA
    #: pulse hook and by the private ``~/.asoundrc``); it is PortAudio's default input device.
    default_device_name: ClassVar[str] = "default"

    def __init__(self, workdir: Path, channels: int, rate: int = 16000, name: str = "voxdmic",
                 *, start_timeout: float = 10.0, extra_sources: dict[str, int] | None = None) -> None:
        self.workdir = Path(workdir).resolve()
        if not 1 <= rate <= _MAX_RATE:
            raise ValueError(f"rate must be 1..{_MAX_RATE} Hz (PulseAudio's limit), not {rate}")
        self.channels = channels
        self.rate = rate
        self.name = name
        #: Channels and map of the pipe source itself (more than ``channels`` when padding is needed,
        #: see :func:`source_layout`); write() adds the spare (zero) channels.
        self.source_channels, self.channel_map = source_layout(channels)
        self.start_timeout = start_timeout
        #: More pipe sources on the same server, name -> channels (e.g. a playback device's monitor): each
        #: is also an ALSA PCM of that name (so PortAudio lists it as a device), fed with feed_extra().
        self.extra_sources = dict(extra_sources or {})
        self._extra_feeders: list[threading.Thread] = []
        self._stop_extra = threading.Event()
        self.socket_path = self.workdir / "native"
        self.fifo_path = self.workdir / f"{name}.fifo"
        self.log_path = self.workdir / "pulseaudio.log"
        self.home = self.workdir / "home"
        self.runtime_dir = self.workdir / "runtime"
        self.state_dir = self.workdir / "state"
        self.client_conf = self.workdir / "client.conf"
        if len(os.fsencode(self.socket_path)) > _MAX_SOCKET_PATH:
            raise ValueError(f"socket path too long for a unix socket ({_MAX_SOCKET_PATH} bytes max): "
                             f"{self.socket_path}")
        if not name.replace("_", "").replace("-", "").replace(".", "").isalnum():
            raise ValueError(f"source name must be [A-Za-z0-9_.-]: {name!r}")

        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize | None = None
        self._fd: int | None = None
        self._fd_lock = threading.Lock()
        self._feeder: threading.Thread | None = None
        self._stop_feeding = threading.Event()
        #: Set by the feeder once the whole payload is in the FIFO (then come silence or nothing).
        self.payload_done = threading.Event()
        #: Frames the feeder put into the FIFO (payload and silence), and frames it dropped because the
        #: server was down at the time (kill() .. start()): real time goes on while the device is gone.
        self.frames_fed = 0
        self.frames_dropped = 0
        #: time.monotonic() of the feeder's first successful write (None until then).
        self.first_write_at: float | None = None
        #: Set when the feeder thread died of an exception (stop_feeding() raises it again).
        self.feed_error: BaseException | None = None

    # ----------------------------------------------------------------------------------- environment

    @property
    def env(self) -> dict[str, str]:
        """Environment variables that make PortAudio (ALSA -> pulse plugin) in a process reach this server.

        Put them in ``os.environ`` before ``pyaudio.PyAudio()`` (e.g. ``monkeypatch.setenv``) or pass
        ``{**os.environ, **mic.env}`` to a subprocess. HOME is private too so that no user ``~/.asoundrc``
        redirects ``default``; the private one points ``pcm.!default`` at the pulse plugin.
        """
        return {
            "PULSE_SERVER": f"unix:{self.socket_path}",
            "PULSE_CLIENTCONFIG": str(self.client_conf),  # autospawn = no
            "PULSE_SOURCE": self.name,  # the plugin's stream picks it even if the default changed
            "PULSE_RUNTIME_PATH": str(self.runtime_dir / "pulse"),
            "PULSE_STATE_PATH": str(self.state_dir),
            "HOME": str(self.home),
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
            "XDG_CONFIG_HOME": str(self.home / ".config"),
            # PortAudio also probes JACK: never let that start a jackd.
            "JACK_NO_START_SERVER": "1",
        }

    def _server_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PULSE_", "DBUS_", "XDG_")) and k not in ("DISPLAY", "WAYLAND_DISPLAY")}
        env.update(self.env)
        del env["PULSE_SERVER"], env["PULSE_SOURCE"]  # client-side only
        # A session bus would let the server register itself there (and is slow to fail without one).
        env["DBUS_SESSION_BUS_ADDRESS"] = f"unix:path={self.workdir / 'no-dbus'}"
        env["DBUS_SYSTEM_BUS_ADDRESS"] = f"unix:path={self.workdir / 'no-dbus'}"
        return env

    def _write_config(self) -> None:
        for d in (self.home / ".config" / "pulse", self.runtime_dir / "pulse", self.state_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.runtime_dir.chmod(0o700)
        self.client_conf.write_text("autospawn = no\n")
        (self.home / ".config" / "pulse" / "client.conf").write_text("autospawn = no\n")
        # The private HOME's daemon.conf replaces /etc/pulse/daemon.conf. Remixing off: a stream only gets
        # the source channels whose positions it asks for, copied, never a mix of the spare ones.
        (self.home / ".config" / "pulse" / "daemon.conf").write_text(
            "enable-remixing = no\nflat-volumes = no\nexit-idle-time = -1\n")
        extra = "".join(f'pcm.{n} {{ type pulse; device "{n}"; hint {{ show on; description "{n}" }} }}\n'
                        for n in self.extra_sources)
        (self.home / ".asoundrc").write_text(
            "# written by tests/virtual_mic.py: ALSA default is the private PulseAudio server\n"
            "pcm.!default { type pulse }\nctl.!default { type pulse }\n" + extra)

    def _command(self) -> list[str]:
        # -L, not a -F script: the -L list stops at the first module that fails to load (a -F script
        # logs the failure and goes on). The native socket comes last, so once it accepts connections
        # the source exists; the only source (no sinks, so no monitors either), it is the default one.
        # Whatever --fail says, PulseAudio 16.1 keeps running after such a failure: start() watches the
        # log for it.
        extra: list[str] = []
        for n, ch in self.extra_sources.items():
            padded, cmap = source_layout(ch)
            extra += ["-L", f"module-pipe-source source_name={n} file={self.workdir / (n + '.fifo')} "
                            f"format=s16le rate={self.rate} channels={padded} channel_map={cmap}"]
        return ["pulseaudio", "-n", "--daemonize=no", "--fail=yes", "--system=no", "--use-pid-file=no",
                "--exit-idle-time=-1", "--disallow-exit", "--realtime=no", "--high-priority=no",
                "--log-target=stderr", "--log-time=1",
                "-L", f"module-pipe-source source_name={self.name} file={self.fifo_path} format=s16le "
                      f"rate={self.rate} channels={self.source_channels} channel_map={self.channel_map}",
                *extra,
                "-L", f"module-native-protocol-unix socket={self.socket_path} auth-anonymous=1"]

    # ----------------------------------------------------------------------------------- server

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._proc.pid if self.running and self._proc is not None else None

    def start(self) -> VirtualMic:
        """Start the server (again after :meth:`kill` / :meth:`stop`) and wait until it accepts clients.

        Raises :class:`VirtualMicError` with the server's log if it exits or is not ready in time.
        """
        if self.running:
            return self
        if shutil.which("pulseaudio") is None:
            raise VirtualMicError("pulseaudio is not installed (make venv installs it: DEB_PACKAGES)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        self._close_fd()
        # Left behind by a SIGKILLed server: the module refuses an existing FIFO path.
        extra_fifos = [self.workdir / f"{n}.fifo" for n in self.extra_sources]
        for stale in (self.fifo_path, self.socket_path, *extra_fifos):
            stale.unlink(missing_ok=True)
        cmd = self._command()
        if self._finalizer is not None:
            self._finalizer.detach()
        # The server gets its own session: a Ctrl-C meant for pytest does not kill it behind our back.
        with self.log_path.open("ab") as log:
            log_start = log.tell()  # this start's part of the log (it keeps every start's)
            self._proc = subprocess.Popen(cmd, env=self._server_env(), cwd=self.workdir,
                                          stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True)
        self._finalizer = weakref.finalize(self, _reap, self._proc)
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._proc.poll() is not None:
                raise VirtualMicError(f"pulseaudio exited with {self._proc.returncode} while starting:\n"
                                      f"{self.log_text(log_start)}")
            if "Failed to load module" in (log := self.log_text(log_start)):
                self.kill()
                raise VirtualMicError(f"pulseaudio could not load its modules:\n{log}")
            if self._accepts():
                return self
            if time.monotonic() > deadline:
                self.kill()
                raise VirtualMicError(f"pulseaudio not ready within {self.start_timeout} s:\n"
                                      f"{self.log_text(log_start)}")
            time.sleep(0.01)

    def _accepts(self) -> bool:
        """Whether the server socket accepts a connection (it exists only once the script has run)."""
        if not self.socket_path.exists():
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            try:
                s.connect(str(self.socket_path))
            except OSError:
                return False
        return True

    def kill(self) -> None:
        """SIGKILL the server: the device vanishes mid-stream; the FIFO and socket file stay behind."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=10)
        self._close_fd()

    def stop(self) -> None:
        """Stop feeding and the server (SIGTERM, then SIGKILL), and remove the FIFO and the socket.

        Raises RuntimeError afterwards if the feeder thread had failed.
        """
        self._stop_extra.set()
        for extra in self._extra_feeders:
            extra.join(5.0)
        self._extra_feeders = []
        try:
            self.stop_feeding()
        finally:
            self._stop_server()

    def _stop_server(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        self._close_fd()
        for path in (self.fifo_path, self.socket_path):
            path.unlink(missing_ok=True)

    def device_index(self, pa: Any) -> int:
        """Index of :attr:`device_name` among the input devices of ``pa`` (a ``pyaudio.PyAudio``).

        Raises LookupError naming the devices PortAudio does list (none at all: the env was not in place
        when ``pa`` was created, or the server was down).
        """
        names = []
        for i in range(pa.get_device_count()):
            info = pa.get_device_info_by_index(i)
            names.append(info["name"])
            if info["name"] == self.device_name and info["maxInputChannels"] > 0:
                return i
        raise LookupError(f"PortAudio lists no input device {self.device_name!r}; it lists {names}")

    def log_text(self, offset: int = 0) -> str:
        """The server's log (its stderr, every start appended), from byte ``offset`` on."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> VirtualMic:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------------------------- writing

    def _open_fd(self) -> int:
        # O_NONBLOCK: opening a FIFO for writing blocks until there is a reader, forever if the server
        # was killed; non-blocking it fails at once (ENXIO, or ENOENT once the FIFO is gone).
        return os.open(self.fifo_path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)

    def _close_fd(self) -> None:
        with self._fd_lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def _as_block(self, pcm: np.ndarray) -> np.ndarray:
        pcm = np.asarray(pcm)
        if pcm.ndim == 1 and self.channels == 1:
            pcm = pcm[:, None]
        if pcm.ndim != 2 or pcm.shape[1] != self.channels:
            raise ValueError(f"expected (n, {self.channels}) samples, got shape {pcm.shape}")
        if pcm.dtype != np.int16:
            raise TypeError(f"expected int16 samples, got {pcm.dtype}")
        return np.ascontiguousarray(pcm, dtype="<i2")

    def write(self, pcm: np.ndarray, timeout: float | None = None) -> None:
        """Write int16 samples ``(n, channels)`` to the FIFO, blocking while it is full.

        Raises BrokenPipeError (or another OSError) when the server is down, TimeoutError when the FIFO
        stays full for ``timeout`` seconds. Mind that the FIFO holds only 64 KiB (about 0.26 s of 8 x 16
        kHz) and the source reads it at the pace clients take data: use :meth:`start_feeding` for more.
        """
        block = self._as_block(pcm)
        if self.source_channels != self.channels:
            block = np.pad(block, ((0, 0), (0, self.source_channels - self.channels)))
        data = memoryview(block.tobytes())
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._fd_lock:
            if self._fd is None:
                self._fd = self._open_fd()
            fd = self._fd
            try:
                while data:
                    try:
                        data = data[os.write(fd, data):]
                    except BlockingIOError:
                        left = None if deadline is None else deadline - time.monotonic()
                        if left is not None and left <= 0:
                            raise TimeoutError("virtual mic FIFO stayed full") from None
                        if self._stop_feeding.is_set() and threading.current_thread() is self._feeder:
                            return  # stop_feeding() while the FIFO is full: drop the rest
                        select.select([], [fd], [], 0.05 if left is None else min(left, 0.05))
            except OSError:
                # EPIPE: the server (the FIFO's only reader) died; reopen on the next write.
                os.close(fd)
                self._fd = None
                raise

    # ----------------------------------------------------------------------------------- feeding

    @property
    def feeding(self) -> bool:
        """Whether the feeder thread runs."""
        return self._feeder is not None and self._feeder.is_alive()

    def start_feeding(self, source: Callable[[int], np.ndarray] | np.ndarray, realtime: bool = True,
                      block_ms: float = 10, then_silence: bool = True) -> None:
        """Feed ``source`` from a daemon thread, ``block_ms`` at a time, until :meth:`stop_feeding`.

        ``source`` is an int16 array ``(n, channels)``, or a callable that gets the number of frames
        wanted and returns an int16 array of at most that many (an empty one ends the payload).
        ``realtime`` paces the writes at ``rate`` against a monotonic clock (without it the FIFO is
        filled as fast as the server drains it). After the payload, ``then_silence`` goes on writing
        zeros until stopped, which also pushes the payload's last partial buffer out of the source.
        While the server is down (:meth:`kill`), blocks are dropped (counted in ``frames_dropped``) and
        the FIFO is reopened once :meth:`start` has brought it back: a microphone that comes back.
        """
        self.stop_feeding()
        block = max(1, round(self.rate * block_ms / 1000))
        if isinstance(source, np.ndarray):
            payload = self._as_block(source)
            pos = 0

            def next_block(n: int) -> np.ndarray:
                nonlocal pos
                out = payload[pos:pos + n]
                pos += len(out)
                return out
        else:
            next_block = source
        self._stop_feeding.clear()
        self.payload_done.clear()
        self.frames_fed = self.frames_dropped = 0
        self.first_write_at = None
        self.feed_error = None
        self._feeder = threading.Thread(target=self._feed, args=(next_block, block, realtime, then_silence),
                                        name=f"virtual-mic-{self.name}", daemon=True)
        self._feeder.start()

    def _feed(self, next_block: Callable[[int], np.ndarray], block: int, realtime: bool,
              then_silence: bool) -> None:
        try:
            self._feed_loop(next_block, block, realtime, then_silence)
        except BaseException as exc:  # kept for stop_feeding(): a dead feeder must fail the test
            self.feed_error = exc
            raise

    def _feed_loop(self, next_block: Callable[[int], np.ndarray], block: int, realtime: bool,
                   then_silence: bool) -> None:
        silence = np.zeros((block, self.channels), np.int16)
        t0 = time.monotonic()
        sent = 0  # frames of real time covered so far (fed or dropped)
        while not self._stop_feeding.is_set():
            if self.payload_done.is_set():
                if not then_silence:
                    return
                pcm = silence
            else:
                pcm = self._as_block(next_block(block))
                if len(pcm) == 0:
                    self.payload_done.set()
                    continue
            try:
                self.write(pcm)
                if self.first_write_at is None:
                    self.first_write_at = time.monotonic()
                self.frames_fed += len(pcm)
            except OSError as exc:
                if exc.errno not in (errno.EPIPE, errno.ENXIO, errno.ENOENT):
                    raise
                self.frames_dropped += len(pcm)
            sent += len(pcm)
            if realtime:
                wait = t0 + sent / self.rate - time.monotonic()
                if wait > 0:
                    self._stop_feeding.wait(wait)

    def stop_feeding(self, timeout: float = 5.0) -> None:
        """Stop the feeder thread and wait for it; what the FIFO holds is still delivered.

        Raises RuntimeError if the feeder had died of an exception (its cause).
        """
        self._stop_feeding.set()
        if self._feeder is not None:
            self._feeder.join(timeout)
            if self._feeder.is_alive():
                raise RuntimeError("virtual mic feeder thread did not stop")
            self._feeder = None
        if self.feed_error is not None:
            exc, self.feed_error = self.feed_error, None
            raise RuntimeError(f"virtual mic feeder failed: {exc!r}") from exc

    def feed_extra(self, name: str, pcm: np.ndarray, clock: float = 1.0) -> None:
        """Feed int16 ``(n, channels)`` to the extra source ``name`` from a thread, paced at ``rate *
        clock`` samples per second of this machine's monotonic clock (``clock = 1 + 100e-6``: a device
        whose clock runs 100 ppm fast), then silence until :meth:`stop` (independent of the main
        source's feeder)."""
        channels = self.extra_sources[name]
        padded, _ = source_layout(channels)
        data = np.pad(np.ascontiguousarray(pcm, "<i2"), ((0, 0), (0, padded - channels)))
        block = self.rate // 100
        path = self.workdir / f"{name}.fifo"

        def run() -> None:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                t0, sent, pos = time.monotonic(), 0, 0
                silence = np.zeros((block, padded), "<i2")
                while not self._stop_extra.is_set():
                    chunk = data[pos:pos + block] if pos < len(data) else silence
                    pos += len(chunk)
                    view = memoryview(chunk.tobytes())
                    while view:
                        view = view[os.write(fd, view):]
                    sent += len(chunk)
                    wait = t0 + sent / (self.rate * clock) - time.monotonic()
                    if wait > 0:
                        self._stop_extra.wait(wait)
            except OSError:
                return  # the server went away: the test sees it
            finally:
                os.close(fd)

        self._stop_extra.clear()
        thread = threading.Thread(target=run, name=f"virtual-source-{name}", daemon=True)
        thread.start()
        self._extra_feeders.append(thread)

    def wait_payload(self, timeout: float) -> bool:
        """Wait until the feeder has written the whole payload; False on timeout."""
        return self.payload_done.wait(timeout)


# ----------------------------------------------------------------------------------- pytest fixture

@contextlib.contextmanager
def virtual_mics(basedir: Path) -> Iterator[Callable[..., VirtualMic]]:
    """``with virtual_mics(dir) as make:`` ``make(channels=4, rate=16000, name="voxdmic")`` -> a started
    :class:`VirtualMic`; all of them are stopped on exit (servers ended, FIFOs removed), and a feeder
    failure is raised then. Each mic gets its own directory under ``basedir``, or a short temporary one
    when that path is too long for a unix socket. For fixtures of any scope; see :func:`make_virtual_mic`.
    """
    mics: list[VirtualMic] = []
    short_dirs: list[str] = []

    def make(channels: int = 4, rate: int = 16000, name: str = "voxdmic", **kwargs: Any) -> VirtualMic:
        workdir = Path(basedir) / f"vmic{len(mics)}"
        if len(os.fsencode(workdir.resolve() / "native")) > _MAX_SOCKET_PATH:
            short_dirs.append(tempfile.mkdtemp(prefix="vmic"))
            workdir = Path(short_dirs[-1])
        mic = VirtualMic(workdir, channels, rate, name, **kwargs)
        mics.append(mic)
        return mic.start()

    try:
        yield make
    finally:
        errors: list[BaseException] = []
        for mic in mics:  # every server is stopped even if one feeder failed; then that failure is raised
            try:
                mic.stop()
            except Exception as exc:
                errors.append(exc)
        for d in short_dirs:
            shutil.rmtree(d, ignore_errors=True)
        if errors:
            raise errors[0]


@pytest.fixture
def make_virtual_mic(tmp_path: Path) -> Iterator[Callable[..., VirtualMic]]:
    """Factory fixture: ``make_virtual_mic(channels=4, rate=16000, name="voxdmic")`` -> a started
    :class:`VirtualMic`, stopped at teardown (see :func:`virtual_mics`).

    Skips the test when ``pulseaudio`` is not installed (``make venv`` installs it). To use it in a
    test module, register this module as a plugin (``pytest_plugins = ["tests.virtual_mic"]`` in
    tests/conftest.py); several mics can run at once, but a process's PortAudio sees one: the one whose
    :attr:`VirtualMic.env` was in place at ``pyaudio.PyAudio()``.
    """
    if shutil.which("pulseaudio") is None:
        pytest.skip("pulseaudio not installed (make venv installs DEB_PACKAGES)")
    with virtual_mics(tmp_path) as make:
        yield make
