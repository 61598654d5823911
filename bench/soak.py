#!/usr/bin/env python3
"""Soak: a long ``voxd run`` under everything issue 16 listed at once, measured from outside.

    python bench/soak.py [--minutes 60] [--reloads 50] [--config config/default.yaml] [--json OUT]

The daemon runs the config's chain (default: ``config/default.yaml``, the 4-mic recognizer chain) on
the bundled 4-mic recording, looped in real time, as a float WAV with 0.3 s of NaN and +inf in every
loop (an 8 s loop: a NaN burst every 8 s). Meanwhile:

- reloads: ``--reloads`` SIGHUPs spread over the run, one in three bad, in turn: an unknown stage (a
  config error), an endpoint another process holds (fails when applied), an out-of-range ``hwm``, broken
  YAML; the good ones alternate the chain with and without a Wiener post-filter. Each file is written
  aside and renamed into place, and each SIGHUP waits for the previous reload's answer (``reload`` or
  ``reload_failed``), so that every outcome can be matched with its file;
- a stall: the daemon is stopped (SIGSTOP) for 3 s at a third of the run and at two thirds, as a frozen
  board would be; the real-time source then catches up;
- subscriber churn: every 2 s a short-lived subscriber connects, takes a few frames and leaves (300 in 10
  minutes); one subscriber stays for the whole run and checks every ``seq``.

Reported: frames received by the long-lived subscriber and lost (seq gaps), reload events (good and
failed; ``reloads_mismatched`` lists any good file refused or bad file taken), the distinct refusal
reasons, ``input_invalid`` events, and the daemon's RSS, open fds and threads (from ``/proc``) at the
start of the measurement (after the warm-up: the first reloads have built every chain kind once), at
the end and at their highest. Exit status 1 if a frame was lost, a reload went the wrong way, or the
daemon died or logged a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from voxd.client import Subscriber  # noqa: E402
from voxd.wire import AudioMessage, EventMessage  # noqa: E402

STALL_S = 3.0
CHURN_EVERY_S = 2.0
SAMPLE_EVERY_S = 5.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def usage(pid: int) -> tuple[int, int, int]:
    """(RSS kB, open fds, threads) of a live process, from /proc."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(status["VmRSS"].split()[0]), len(os.listdir(f"/proc/{pid}/fd")), int(status["Threads"])


class Listener(threading.Thread):
    """The long-lived subscriber: counts frames, seq gaps and events; keeps no audio."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(name="listener", daemon=True)
        self.endpoint = endpoint
        self.frames = 0
        self.events: dict[str, int] = {}
        self.first_seq: int | None = None
        self.last_seq: int | None = None
        self.missed = 0
        self.ready = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        with Subscriber(self.endpoint, topics=("audio", "event"), hwm=100_000) as sub:
            self.ready.set()
            while not self.stop.is_set():
                msg = sub.recv(timeout_ms=100)
                if isinstance(msg, AudioMessage):
                    self.frames += 1
                    if self.first_seq is None:
                        self.first_seq = msg.seq
                    self.last_seq = msg.seq
                elif isinstance(msg, EventMessage):
                    self.events[msg.type] = self.events.get(msg.type, 0) + 1
                    if msg.type == "stopping":
                        break
            self.missed = sub.missed


def churn(endpoint: str, stop: threading.Event, counter: list[int]) -> None:
    """Every CHURN_EVERY_S a subscriber connects, takes up to 5 frames (1 s at most), and leaves."""
    while not stop.wait(CHURN_EVERY_S):
        with Subscriber(endpoint, topics=("audio",)) as sub:
            deadline = time.monotonic() + 1.0
            got = 0
            while got < 5 and time.monotonic() < deadline:
                got += sub.recv(timeout_ms=100) is not None
        counter[0] += 1


def recording(tmp: Path) -> Path:
    """The 4-mic demo recording as a float WAV with 0.3 s of NaN/+inf at 4 s (every loop)."""
    x, rate = sf.read(ROOT / "demo" / "respeaker4-kitchen.flac", dtype="float32", always_2d=True)
    x[4 * rate : int(4.15 * rate)] = np.nan
    x[int(4.15 * rate) : int(4.3 * rate)] = np.inf
    path = tmp / "soak.wav"
    sf.write(path, x, rate, subtype="FLOAT")
    return path


def configs(base: Path, rec: Path, port: int, taken: int) -> list[tuple[str, str]]:
    """The config texts to reload to, in turn: (label, text). Two good, one bad, repeated."""
    text = base.read_text()
    head = (f"capture: {{type: file, path: {rec}, realtime: true, loop: true}}\n"
            f"output: {{endpoints: ['tcp://127.0.0.1:{port}'], stats_interval_s: 5}}\nlog: {{level: info}}\n")
    import yaml

    doc = yaml.safe_load(text)
    sections = {k: doc[k] for k in ("processing", "array", "chain") if k in doc}
    chain = sections["chain"]
    with_wiener = list(chain)
    if not any(e["stage"] == "wiener" for e in chain) and any(e["stage"] == "beamform" for e in chain):
        i = next(k for k, e in enumerate(chain) if e["stage"] == "beamform")
        with_wiener.insert(i + 1, {"stage": "wiener"})
    good_a = head + yaml.safe_dump(sections, sort_keys=False)
    good_b = head + yaml.safe_dump({**sections, "chain": with_wiener}, sort_keys=False)
    bad = [
        ("unknown stage", good_a.replace("stage: vad", "stage: vda", 1)),
        ("endpoint in use", good_b.replace(f"127.0.0.1:{port}", f"127.0.0.1:{taken}")),
        ("hwm out of range", good_a.replace("stats_interval_s: 5", "stats_interval_s: 5, hwm: 10000000000")),
        ("broken YAML", good_b + "chain: [\n"),
    ]
    out: list[tuple[str, str]] = []
    for k in range(0, 200, 3):
        out += [("good (chain A)", good_a), ("good (chain B)", good_b), bad[(k // 3) % len(bad)]]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--reloads", type=int, default=50)
    ap.add_argument("--config", default=str(ROOT / "config" / "default.yaml"))
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    duration = args.minutes * 60
    with tempfile.TemporaryDirectory(prefix="voxd-soak") as tmp_s:
        tmp = Path(tmp_s)
        rec = recording(tmp)
        port = free_port()
        squatter = socket.socket()  # holds the port of the "endpoint in use" reloads
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        plan = configs(Path(args.config), rec, port, squatter.getsockname()[1])
        cfg = tmp / "voxd.yaml"
        cfg.write_text(plan[0][1])
        endpoint = f"tcp://127.0.0.1:{port}"
        listener = Listener(endpoint)
        listener.start()
        listener.ready.wait(10)
        log = (tmp / "daemon.log").open("w")
        daemon = subprocess.Popen([sys.executable, "-m", "voxd", "run", "--config", str(cfg)], cwd=ROOT,
                                  stderr=log)
        stop = threading.Event()
        churned = [0]
        churner = threading.Thread(target=churn, args=(endpoint, stop, churned), daemon=True)
        samples: list[tuple[float, int, int, int]] = []
        reloads: list[str] = []
        t_start = time.monotonic()
        while listener.frames == 0:
            if daemon.poll() is not None or time.monotonic() - t_start > 60:
                print(f"the daemon did not start:\n{(tmp / 'daemon.log').read_text()}", file=sys.stderr)
                return 1
            time.sleep(0.1)
        churner.start()
        def answered() -> int:
            return listener.events.get("reload", 0) + listener.events.get("reload_failed", 0)

        t0 = time.monotonic()
        reload_at = [t0 + duration * (k + 0.5) / args.reloads for k in range(args.reloads)]
        stall_at = [t0 + duration / 3, t0 + 2 * duration / 3]
        base: tuple[int, int, int] | None = None
        stalls = 0
        next_sample = t0
        k = 0
        while (now := time.monotonic()) < t0 + duration and daemon.poll() is None:
            # one reload at a time: the next SIGHUP only once the previous one was answered (a SIGHUP
            # during a reload is kept for after it, and would then read whatever the file holds by then)
            if k < len(reload_at) and now >= reload_at[k] and answered() >= k:
                label, text = plan[(k + 1) % len(plan)]
                # written aside and renamed, as editors do: a reload still reading the previous text
                # (they overlap when reloads come every few seconds) never sees a half-written file
                (tmp / "next.yaml").write_text(text)
                os.replace(tmp / "next.yaml", cfg)
                daemon.send_signal(signal.SIGHUP)
                reloads.append(label)
                k += 1
            if stall_at and now >= stall_at[0]:
                stall_at.pop(0)
                daemon.send_signal(signal.SIGSTOP)
                time.sleep(STALL_S)
                daemon.send_signal(signal.SIGCONT)
                stalls += 1
            if now >= next_sample:
                next_sample += SAMPLE_EVERY_S
                samples.append((now - t0, *usage(daemon.pid)))
                if base is None and k >= 3:  # every chain kind built once: the baseline
                    base = samples[-1][1:]
            time.sleep(0.05)
        # the last reload may still be loading: wait for its answer (reload or reload_failed)
        deadline = time.monotonic() + 60
        while answered() < len(reloads) and time.monotonic() < deadline and daemon.poll() is None:
            time.sleep(0.1)
        alive = daemon.poll() is None
        end = usage(daemon.pid) if alive else (0, 0, 0)
        stop.set()
        churner.join(10)
        daemon.send_signal(signal.SIGTERM)
        status = daemon.wait(timeout=30)
        listener.join(30)
        listener.stop.set()
        squatter.close()
        log.close()
        text = (tmp / "daemon.log").read_text()
    rss, fds, threads = zip(*[s[1:] for s in samples], strict=True) if samples else ((0,), (0,), (0,))
    base = base or (samples[0][1:] if samples else (0, 0, 0))
    seqs = (listener.last_seq - listener.first_seq + 1) if listener.first_seq is not None else 0
    figures: dict[str, Any] = {
        "minutes": round((time.monotonic() - t0) / 60, 2),
        "daemon_exit": status,
        "frames_received": listener.frames,
        "frames_in_seq_range": seqs,
        "frames_lost": listener.missed + (seqs - listener.frames - listener.missed),
        "reloads_sent": len(reloads),
        "reloads_bad_sent": sum(not r.startswith("good") for r in reloads),
        "events": listener.events,
        "stalls": stalls,
        "churned_subscribers": churned[0],
        "rss_kb": {"base": base[0], "end": end[0], "max": max(rss)},
        "fds": {"base": base[1], "end": end[1], "max": max(fds)},
        "threads": {"base": base[2], "end": end[2], "max": max(threads)},
        "tracebacks_in_log": text.count("Traceback"),
        "reloads_mismatched": [  # a good config refused, or a bad one taken: none expected
            (label, outcome) for label, outcome in zip(reloads, [
                "good" if "reloaded (" in line else "bad" for line in text.splitlines()
                if "reloaded (" in line or "reload refused" in line], strict=False)
            if label.startswith("good") != (outcome == "good")],
        "refusals": sorted({line.split("reload refused: ", 1)[1].split(": ", 1)[1][:90]
                            for line in text.splitlines() if "reload refused: " in line}),
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    ok = (alive and status == 0 and figures["frames_lost"] == 0 and not figures["tracebacks_in_log"]
          and not figures["reloads_mismatched"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
