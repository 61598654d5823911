"""A live input device through PyAudio (PortAudio) in callback mode, surviving device loss.

The PortAudio callback only copies the buffer into a bounded queue (no conversion, no logging, no
locks beyond the queue's own): when the queue is full it counts an overrun and flags the next block
``DISCONTINUITY``; PortAudio's own input-overflow status is counted too. The worker thread pops blocks
in :meth:`LiveSource.read`, converts int16 to float32, applies the channel map and stamps capture
times.

Device loss: a stream that stops being active (PortAudio's ``-9999 Unanticipated host error`` when the
sound server behind the device dies) or no data for ``stall_timeout_ms`` (a stalled device delivers
nothing and raises nothing) means the device is lost. The source then closes the stream, terminates
PortAudio (it never rescans devices otherwise) and retries — re-initialising PortAudio each time — with
exponential backoff capped at ``retry_max_s``. It reports ``device_lost`` and, once audio flows again,
``device_restored``; the first block after the return is flagged ``DISCONTINUITY`` so the chain resets.

Reference device (``capture.reference_device``): a second input stream on the same PortAudio, opened,
started and closed with the microphones' stream, at their rate. Its callback queues buffers the same
way; :meth:`LiveSource.read` moves them into a :class:`~voxd.sources.drift.DriftCompensator`, which
resamples them onto the microphones' clock, and appends as many reference samples as the block has
microphone samples (its channels come last: ``capture.reference_positions()``). A reference stream that
dies is reported once (``reference_lost``) and the reference is silence from then on (the ``aec`` stage
then passes its input through) until the microphones' device is reopened.
"""

from __future__ import annotations

import logging
import queue
import time
from typing import Any

import numpy as np

from voxd.config.model import PyAudioCapture
from voxd.errors import EX_UNAVAILABLE, VoxdError
from voxd.frame import Flags
from voxd.sources.base import Block, Source
from voxd.sources.devices import InputDevice, describe, find_device, import_pyaudio, input_devices, quiet_alsa
from voxd.sources.drift import DriftCompensator

log = logging.getLogger("voxd.capture")

OVERRUN_EVENT_INTERVAL_S = 1.0  # at most one 'overrun' event per second
RETRY_FIRST_S = 0.25  # first backoff after a loss
CLOCK_SLACK_S = 0.05  # re-anchor block times when the sample clock and the wall clock drift apart


class LiveSource(Source):
    """``capture: {type: pyaudio, ...}``: see the module docstring. ``chain_rate`` (Hz) is used to pick
    the device rate when the config does not give one."""

    def __init__(self, cfg: PyAudioCapture, chain_rate: int) -> None:
        self.cfg = cfg
        self.chain_rate = chain_rate
        self.name = str(cfg.device) if cfg.device is not None else "default input"
        self.channels = cfg.out_channels
        kept = cfg.device_channels()
        self._map = np.asarray(kept) if kept is not None else None
        self._pa: Any = None
        self._stream: Any = None
        self._queue: queue.Queue[tuple[bytes, float, bool]] = queue.Queue()
        self._flag_next = False  # callback side: an overrun happened, flag the next queued block
        self._counts = {"overruns": 0, "overflows": 0, "device_lost": 0, "device_restored": 0}
        self._events: list[tuple[str, dict[str, Any]]] = []
        self._lost = False
        self._down = False  # device_lost reported and audio not yet back
        self._restoring = False
        self._retry_at = 0.0
        self._backoff = RETRY_FIRST_S
        self._last_data = 0.0
        self._last_overrun_event = 0.0
        self._t0 = 0.0  # wall time of sample 0 of the current clock anchor
        self._n = 0  # samples delivered since the anchor
        # the reference device (capture.reference_device), if any
        self._ref_stream: Any = None
        self._ref_queue: queue.Queue[tuple[bytes, float]] = queue.Queue()
        self._ref_lost = False
        self._drift: DriftCompensator | None = None
        self._ref_overruns = 0

    # -- start-up ---------------------------------------------------------------------------------

    def open(self) -> None:
        """Open the device (not started) or fail with one line (exit 69) naming what is available."""
        self._pa = self._init_portaudio()
        try:
            device = find_device(self._pa, self.cfg.device)
            self.rate = self._pick_rate(device)
            self.name = device.name
            self._open_stream(device, start=False)
        except BaseException:
            self._terminate()
            raise

    def start(self) -> None:
        """Start the stream(s): from now on the callbacks queue buffers."""
        if self._ref_stream is not None:
            self._ref_stream.start_stream()
        self._stream.start_stream()
        self._last_data = time.monotonic()

    def _init_portaudio(self) -> Any:
        pyaudio = import_pyaudio()
        quiet_alsa()
        self._pyaudio = pyaudio
        return pyaudio.PyAudio()

    def _pick_rate(self, device: InputDevice) -> int:
        cfg, pa = self.cfg, self._pa
        if cfg.channels > device.max_channels:
            raise VoxdError(f"capture.channels: device '{device.name}' gives at most {device.max_channels} "
                            f"input channels, not {cfg.channels}; {describe(input_devices(pa))}",
                            EX_UNAVAILABLE)
        candidates = [cfg.rate] if cfg.rate is not None else [self.chain_rate, int(device.default_rate)]
        for rate in candidates:
            try:
                if pa.is_format_supported(rate, input_device=device.index, input_channels=cfg.channels,
                                          input_format=self._pyaudio.paInt16):
                    return int(rate)
            except ValueError:
                continue
        raise VoxdError(f"capture.rate: device '{device.name}' cannot capture {cfg.channels} ch at "
                        f"{' or '.join(f'{r} Hz' for r in candidates)}", EX_UNAVAILABLE)

    def _open_stream(self, device: InputDevice, start: bool = True) -> None:
        block = max(1, round(self.rate * self.cfg.block_ms / 1000))
        self._queue = queue.Queue(maxsize=max(2, round(self.cfg.queue_ms / self.cfg.block_ms)))
        self._flag_next = False
        try:
            self._stream = self._pa.open(format=self._pyaudio.paInt16, channels=self.cfg.channels,
                                         rate=self.rate, input=True, input_device_index=device.index,
                                         frames_per_buffer=block, stream_callback=self._callback,
                                         start=start)
        except OSError as exc:
            raise VoxdError(f"capture.device: cannot open '{device.name}' ({self.cfg.channels} ch, "
                            f"{self.rate} Hz): {exc}", EX_UNAVAILABLE) from None
        self._last_data = time.monotonic()
        log.info("capturing from '%s': %d ch at %d Hz, %d-sample buffers", device.name, self.cfg.channels,
                 self.rate, block)
        if self.cfg.reference_device is not None:
            self._open_reference(block, start)

    def _open_reference(self, block: int, start: bool) -> None:
        cfg = self.cfg
        device = find_device(self._pa, cfg.reference_device, what="capture.reference_device")
        self._ref_queue = queue.Queue(maxsize=max(2, round(cfg.queue_ms / cfg.block_ms)))
        try:
            self._ref_stream = self._pa.open(format=self._pyaudio.paInt16,
                                             channels=cfg.reference_device_channels, rate=self.rate,
                                             input=True, input_device_index=device.index,
                                             frames_per_buffer=block, stream_callback=self._ref_callback,
                                             start=start)
        except (OSError, ValueError) as exc:
            raise VoxdError(f"capture.reference_device: cannot open '{device.name}' "
                            f"({cfg.reference_device_channels} ch, {self.rate} Hz): {exc}",
                            EX_UNAVAILABLE) from None
        if self._drift is None:
            self._drift = DriftCompensator(cfg.reference_device_channels, self.rate,
                                           cfg.reference_device_buffer_ms)
        else:
            self._drift.reset()  # the drift estimate is kept: the same two clocks
        self._ref_lost = False
        log.info("playback reference from '%s': %d ch at %d Hz, onto the microphones' clock", device.name,
                 cfg.reference_device_channels, self.rate)

    def _ref_callback(self, in_data: bytes | None, frame_count: int, time_info: Any,
                      status: int) -> tuple[None, int]:
        if in_data is not None:
            try:
                self._ref_queue.put_nowait((in_data, time.time()))
            except queue.Full:
                self._ref_overruns += 1
        return (None, self._pyaudio.paContinue)

    def _reference_for(self, n: int, t: float) -> np.ndarray:
        """``(reference_device_channels, n)`` float32 for a block of ``n`` microphone samples delivered at
        ``t`` (wall clock s, as the reference's buffers are stamped)."""
        drift = self._drift
        assert drift is not None
        while True:
            try:
                data, t_ref = self._ref_queue.get_nowait()
            except queue.Empty:
                break
            pcm = np.frombuffer(data, dtype="<i2").reshape(-1, self.cfg.reference_device_channels)
            drift.put(np.ascontiguousarray(pcm.T, dtype=np.float32) * np.float32(1 / 32768), t_ref)
        if not self._ref_lost and self._ref_stream is not None:
            try:
                alive = bool(self._ref_stream.is_active())
            except OSError:
                alive = False
            if not alive:
                self._ref_lost = True
                self._events.append(("reference_lost", {"device": str(self.cfg.reference_device)}))
                log.warning("playback reference device '%s' lost: the reference is silence until the "
                            "capture device is reopened", self.cfg.reference_device)
        if self._ref_lost:
            return np.zeros((self.cfg.reference_device_channels, n), np.float32)
        return drift.take(n, t)

    # -- the PortAudio callback (its own thread: copy, count, return) -------------------------------

    def _callback(self, in_data: bytes | None, frame_count: int, time_info: Any,
                  status: int) -> tuple[None, int]:
        flag = self._flag_next
        if status & self._pyaudio.paInputOverflow:
            self._counts["overflows"] += 1
            flag = True
        if in_data is not None:
            try:
                self._queue.put_nowait((in_data, time.time() - frame_count / self.rate, flag))
                flag = False
            except queue.Full:
                self._counts["overruns"] += 1
                flag = True
        self._flag_next = flag
        return (None, self._pyaudio.paContinue)

    # -- the worker side ----------------------------------------------------------------------------

    def read(self, timeout: float) -> Block | None:
        if self._lost:
            self._try_restore(timeout)
            return None
        try:
            data, t_wall, flag = self._queue.get(timeout=timeout)
        except queue.Empty:
            self._check_alive()
            return None
        now = time.monotonic()
        self._last_data = now
        pcm = np.frombuffer(data, dtype="<i2").reshape(-1, self.cfg.channels)
        x = pcm.T if self._map is None else pcm.T[self._map]
        samples = np.ascontiguousarray(x, dtype=np.float32) * np.float32(1 / 32768)
        if self._drift is not None:
            delivered = t_wall + samples.shape[1] / self.rate  # the callback's time (t_wall: block start)
            samples = np.concatenate([samples, self._reference_for(samples.shape[1], delivered)], axis=0)
        flags = Flags.DISCONTINUITY if (flag or self._restoring) else Flags.NONE
        if self._restoring:
            self._restoring = self._down = False
            self._counts["device_restored"] += 1
            self._events.append(("device_restored", {"device": self.name}))
            log.warning("capture device '%s' restored", self.name)
        if flag and now - self._last_overrun_event >= OVERRUN_EVENT_INTERVAL_S:
            self._last_overrun_event = now
            self._events.append(("overrun", {"overruns": self._counts["overruns"],
                                             "overflows": self._counts["overflows"]}))
        # Block times follow the sample clock (exact spacing), re-anchored to the wall clock after a
        # discontinuity or when the two drift apart.
        t = self._t0 + self._n / self.rate
        if flags or self._n == 0 or abs(t - t_wall) > CLOCK_SLACK_S:
            self._t0, self._n, t = t_wall, 0, t_wall
        self._n += samples.shape[1]
        return Block(samples, t, flags)

    def _check_alive(self) -> None:
        stalled = time.monotonic() - self._last_data > self.cfg.stall_timeout_ms / 1000
        try:
            active = bool(self._stream.is_active())
        except OSError as exc:
            active, why = False, f"stream error: {exc}"
        else:
            why = "stream stopped (host error)"
        if stalled and active:
            why = f"no data for {self.cfg.stall_timeout_ms:g} ms (device stalled)"
        if stalled or not active:
            self._lose(why)

    def _lose(self, why: str) -> None:
        first = not self._down
        if first:  # one device_lost per outage, however many reopen attempts stall again
            self._down = True
            self._counts["device_lost"] += 1
            self._events.append(("device_lost", {"device": self.name, "reason": why}))
            log.warning("capture device '%s' lost: %s; reopening with backoff", self.name, why)
        else:
            log.debug("capture device '%s' still down: %s", self.name, why)
        self._close_stream()
        self._terminate()
        self._lost = True
        self._backoff = RETRY_FIRST_S if first else min(self._backoff * 2, self.cfg.retry_max_s)
        self._retry_at = time.monotonic() + self._backoff

    def _try_restore(self, timeout: float) -> None:
        wait = self._retry_at - time.monotonic()
        if wait > 0:
            time.sleep(min(wait, timeout))
            return
        try:
            self._pa = self._init_portaudio()
            device = find_device(self._pa, self.cfg.device)
            self._pick_rate_again(device)
            self._open_stream(device)
        except (VoxdError, OSError) as exc:
            self._close_stream()
            self._terminate()
            self._backoff = min(self._backoff * 2, self.cfg.retry_max_s)
            self._retry_at = time.monotonic() + self._backoff
            log.info("capture device still unavailable (%s); next try in %.2f s", exc, self._backoff)
            return
        self._lost = False
        self._restoring = True  # device_restored is reported with the first block that arrives

    def _pick_rate_again(self, device: InputDevice) -> None:
        # The chain was built for this rate; a device that comes back must give the same.
        rate = self._pick_rate(device)
        if rate != self.rate:
            raise VoxdError(f"device '{device.name}' came back at {rate} Hz, not {self.rate} Hz")

    # -- bookkeeping ------------------------------------------------------------------------------

    def take_events(self) -> list[tuple[str, dict[str, Any]]]:
        """Events since the last call (``device_lost``, ``device_restored``, ``overrun``)."""
        events, self._events = self._events, []
        return events

    @property
    def counters(self) -> dict[str, int]:
        out = {**self._counts, "queue_depth": self._queue.qsize()}
        if self._drift is not None:  # the reference device: its measured clock offset and buffer
            out.update(reference_drift_ppm=round(self._drift.drift_ppm),
                       reference_buffer_ms=round(self._drift.fill * 1000 / self.rate),
                       reference_underruns=self._drift.underruns, reference_overruns=self._ref_overruns)
        return out

    def _close_stream(self) -> None:
        ref, self._ref_stream = self._ref_stream, None
        if ref is not None:
            try:
                ref.close()
            except OSError as exc:
                log.debug("closing the reference stream: %s", exc)
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.close()
            except OSError as exc:  # a stream whose server died may refuse to close cleanly
                log.debug("closing the stream: %s", exc)

    def _terminate(self) -> None:
        pa, self._pa = self._pa, None
        if pa is not None:
            pa.terminate()

    def close(self) -> None:
        self._close_stream()
        self._terminate()
