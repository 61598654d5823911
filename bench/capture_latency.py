#!/usr/bin/env python3
"""Capture-to-publish latency: from writing a block into a (virtual) microphone to its arrival at a
ZeroMQ subscriber, through the real daemon.

    python bench/capture_latency.py [--seconds 20] [--block-ms 10] [--frame-ms 20] [--channels 4]

A private PulseAudio with a pipe source (tests/virtual_mic.py) is the microphone: PortAudio reaches it
through the ALSA ``pulse`` plugin, as it would a real server. A feeder thread writes a sample counter
in real time and records when each block went in; ``voxd run`` captures it (``select`` of the counter
channel, so the samples come out unchanged) and publishes; a subscriber in this process reads the
counter of each frame's last sample and looks up when that sample was written. Prints p50/p99/max
over the run (the first 2 s are skipped). The figure includes PulseAudio's and the ALSA plugin's
buffering, the daemon's device block and output frame: it is an upper bound for a board whose ALSA
device is opened directly.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.virtual_mic import ramp_pattern, virtual_mics  # noqa: E402
from voxd.client import Subscriber  # noqa: E402
from voxd.wire import AudioMessage  # noqa: E402

RATE = 16000
PERIOD = 32767  # the ramp counter's period


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(seconds: float, block_ms: float, frame_ms: float, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Latencies (s) of every received frame's first and last sample, after the warm-up. The last
    sample's is the processing latency; the first sample's adds the wait for the frame to fill."""
    block = round(RATE * block_ms / 1000)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    with tempfile.TemporaryDirectory(prefix="voxd-lat") as tmp, virtual_mics(Path(tmp)) as make:
        mic = make(channels=channels, rate=RATE)
        cfg = Path(tmp) / "lat.yaml"
        cfg.write_text(f"capture: {{type: pyaudio, device: pulse, channels: {channels}, rate: {RATE}, "
                       f"block_ms: {block_ms}}}\nchain: [{{stage: select, channels: [0]}}]\n"
                       f"output: {{endpoints: ['{endpoint}'], frame_ms: {frame_ms}, "
                       "wait_for_subscriber_s: 20}\nlog: {level: warning}\n")
        daemon = subprocess.Popen([sys.executable, "-m", "voxd", "run", "--config", str(cfg)], cwd=ROOT,
                                  env={**os.environ, **mic.env})
        written: dict[int, float] = {}  # block index -> time.time() its write returned
        stop = threading.Event()

        def feed() -> None:
            t0 = time.monotonic()
            k = 0
            while not stop.is_set():
                delay = t0 + k * block / RATE - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                mic.write(ramp_pattern(block, channels, k * block), timeout=1.0)
                written[k] = time.time()
                k += 1

        latencies: list[tuple[float, float]] = []
        try:
            with Subscriber(endpoint, topics=("audio",)) as sub:
                sub.recv(timeout_ms=200)  # subscribe; the daemon waits for us before it starts the device
                feeder = threading.Thread(target=feed, daemon=True)
                feeder.start()
                base, last = 0, 0
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    msg = sub.recv(timeout_ms=200)
                    if not isinstance(msg, AudioMessage):
                        continue
                    arrived = time.time()
                    counter = int(np.frombuffer(msg.pcm, "<i2")[-1])
                    if counter == 0:
                        continue  # silence before the first write
                    index = base + counter - 1
                    if index < last - PERIOD // 2:  # the counter wrapped
                        base += PERIOD
                        index += PERIOD
                    last = index
                    k, k0 = index // block, (index - msg.samples.shape[1] + 1) // block
                    if k0 in written and k in written and index / RATE > 2.0:
                        latencies.append((arrived - written[k0], arrived - written[k]))
        finally:
            stop.set()
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=15)
    lat = np.asarray(latencies).reshape(-1, 2)
    return lat[:, 0], lat[:, 1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--block-ms", type=float, default=10.0, help="capture.block_ms (device buffer)")
    ap.add_argument("--frame-ms", type=float, default=20.0, help="output.frame_ms")
    ap.add_argument("--channels", type=int, default=4)
    args = ap.parse_args()
    first, last = measure(args.seconds, args.block_ms, args.frame_ms, args.channels)
    if last.size == 0:
        print("no frames measured", file=sys.stderr)
        return 1
    print(f"capture -> publish latency, {args.channels} ch {RATE} Hz, capture.block_ms {args.block_ms:g}, "
          f"output.frame_ms {args.frame_ms:g}, {last.size} frames:")
    for what, lat in (("last sample of a frame", last), ("first sample of a frame", first)):
        p50, p99 = np.percentile(lat * 1000, [50, 99])
        print(f"  {what:<24} p50 {p50:6.1f} ms  p99 {p99:6.1f} ms  max {lat.max() * 1000:6.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
