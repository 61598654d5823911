"""bench/chain_bench.py runs on a shipped config and reports every node of the chain."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT


def test_chain_bench_reports_each_stage_and_the_rtf():
    r = subprocess.run([sys.executable, "bench/chain_bench.py", "--config", "config/examples/two-mics.yaml",
                        "--seconds", "2", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert [s["name"] for s in report["stages"]] == ["select", "highpass", "mix", "gain"]
    assert report["frames"] == 200
    assert all(s["p99_us"] >= s["p50_us"] > 0 for s in report["stages"])
    assert 0 < report["rtf_cpu"] < 1 and report["delay_ms"] == 0
