"""A real subscriber process for tests: records what a voxd stream delivers, then writes it out.

    python tests/subscriber.py ENDPOINT OUT [--until EVENT ...] [--frames N] [--seconds S] [--progress]

Prints ``ready`` once subscribed; stops at one of the ``--until`` events, after N audio frames, after S
seconds, or on SIGTERM; writes ``OUT.json`` (seqs, pts, header side flags, arrival times, events,
client counters) and ``OUT.pcm`` (the raw payloads, concatenated). With ``--progress`` it also prints
``event TYPE N`` for every event (N: audio frames so far), ``frames N`` every 10 audio frames and
``stats overruns=N`` for every stats message, as they arrive, so that a test can wait for what
happened rather than sleep for a guessed time.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from voxd.client import Subscriber
from voxd.wire import AudioMessage, EventMessage, StatsMessage


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("endpoint")
    ap.add_argument("out")
    ap.add_argument("--until", action="append", default=[])
    ap.add_argument("--frames", type=int)
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args()
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    info: dict = {"seqs": [], "pts": [], "arrival": [], "speech": [], "discontinuity": [], "events": [],
                  "stats": [], "channels": None, "rate": None}
    chunks: list[bytes] = []
    deadline = time.monotonic() + args.seconds
    with Subscriber(args.endpoint, topics=("audio", "event", "stats")) as sub:
        print("ready", flush=True)
        while not stop and time.monotonic() < deadline:
            msg = sub.recv(timeout_ms=100)
            if isinstance(msg, AudioMessage):
                info["seqs"].append(msg.seq)
                info["pts"].append(msg.pts)
                info["arrival"].append(time.time())
                info["speech"].append(bool(msg.header["speech"]))
                info["discontinuity"].append(bool(msg.header.get("discontinuity", False)))
                info["channels"], info["rate"] = msg.channels, msg.rate
                chunks.append(msg.pcm)
                if args.progress and len(chunks) % 10 == 0:
                    print(f"frames {len(chunks)}", flush=True)
                if args.frames is not None and len(chunks) >= args.frames:
                    break
            elif isinstance(msg, EventMessage):
                info["events"].append({"type": msg.type, **msg.header})
                if args.progress:
                    print(f"event {msg.type} {len(chunks)}", flush=True)
                if msg.type in args.until:
                    break
            elif isinstance(msg, StatsMessage):
                info["stats"].append(msg.header)
                if args.progress:
                    print(f"stats overruns={msg.header.get('overruns', 0)}", flush=True)
        info["gaps"], info["restarts"] = sub.gaps, sub.restarts
    Path(args.out + ".json").write_text(json.dumps(info))
    Path(args.out + ".pcm").write_bytes(b"".join(chunks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
