"""``voxd status ENDPOINT``: wait for the daemon's next ``stats`` message and print it as a table.

The daemon publishes ``stats`` every ``output.stats_interval_s`` seconds (default 5): frames published,
the chain's real-time factor, the source's counters (drops, overruns, device losses), per-stage time
per frame (p50/p99, microseconds), the current side values (direction of arrival, AGC gain, level)
and the share of speech frames since the previous message, plus any stage's own summary
(``stage_stats``). ``--json`` prints the message as one JSON object instead.
"""

from __future__ import annotations

import json
import time
from typing import Any, TextIO

from voxd.client import Subscriber
from voxd.errors import EX_UNAVAILABLE, VoxdError
from voxd.wire import TOPIC_STATS, StatsMessage

__all__ = ["format_stats", "status"]


def status(endpoint: str, timeout_s: float, out: TextIO, as_json: bool = False,
           server_key: str | None = None, client_key_file: str | None = None) -> int:
    """Print the next stats message of the daemon at ``endpoint``; exit 69 if none within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    with Subscriber(endpoint, topics=(TOPIC_STATS,), server_key=server_key,
                    client_key_file=client_key_file) as sub:
        while time.monotonic() < deadline:
            msg = sub.recv(timeout_ms=100)
            if isinstance(msg, StatsMessage):
                out.write(json.dumps(msg.header) + "\n" if as_json else format_stats(msg.header))
                return 0
    raise VoxdError(f"{endpoint}: no stats message within {timeout_s:g} s (is voxd running there? "
                    "stats come every output.stats_interval_s)", EX_UNAVAILABLE)


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={_value(x)}" for k, x in v.items())
    return str(v)


def format_stats(h: dict[str, Any]) -> str:
    """A stats header as a human table: scalar fields first, then the per-stage times."""
    skip = {"stages", "stage_stats", "v", "stream"}
    lines = [f"stream {h.get('stream', '?')}"]
    width = max((len(k) for k in h if k not in skip), default=0)
    lines += [f"  {k:<{width}}  {_value(v)}" for k, v in h.items() if k not in skip]
    stages = h.get("stages") or {}
    if stages:
        name_w = max(len("stage"), *(len(n) for n in stages))
        lines.append(f"  {'stage':<{name_w}}  {'p50 us':>8}  {'p99 us':>8}")
        for name, t in stages.items():
            lines.append(f"  {name:<{name_w}}  {t.get('p50_us', 0):>8.1f}  {t.get('p99_us', 0):>8.1f}")
    for name, summary in (h.get("stage_stats") or {}).items():
        lines.append(f"  {name}: {_value(summary)}")
    return "\n".join(lines) + "\n"
