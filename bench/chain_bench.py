#!/usr/bin/env python3
"""Chain cost: per-stage time per frame (p50/p99, microseconds), the whole chain's real-time factor,
the algorithmic latency (declared and measured) and the peak RSS. A thin wrapper around
:mod:`voxd.commands.bench`, the same as ``voxd bench``:

    python bench/chain_bench.py --config config/default.yaml [--input FILE] [--seconds 30] [--set K=V]
"""

from __future__ import annotations

import sys

from voxd.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if not any(a == "--config" or a.startswith("--config=") or a == "-c" for a in args):
        args = ["--config", "config/default.yaml", *args]  # the old script's default
    sys.exit(main(["bench", *args]))
