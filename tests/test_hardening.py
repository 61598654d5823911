"""Issue 16 (hardening), through the real command: what a config, an audio file or an output path can do
to ``voxd check`` / ``voxd process`` / ``voxd run``. Each case used to end in a traceback, a crash, a
runaway allocation or a silent success; each now ends in one line and its documented exit status.

Reload failures are in ``tests/test_reload.py``, malformed wire messages in ``tests/test_fuzz_wire.py``,
non-finite audio in ``tests/test_fuzz_stages.py`` and here (through ``voxd process``).
"""

from __future__ import annotations

import os
import resource
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import ROOT, run_voxd
from voxd.errors import EX_CANTCREAT, EX_CONFIG, EX_DATAERR

MEMORY_LIMIT = 2 * 1024**3  # address space given to the commands that once ran away (bytes)


def limited(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``voxd ARGS`` with its address space capped at :data:`MEMORY_LIMIT`: a runaway allocation fails
    inside the child (MemoryError) instead of taking the machine's memory."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    return subprocess.run([sys.executable, "-m", "voxd", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout, check=False, preexec_fn=cap)


def one_line(r: subprocess.CompletedProcess[str], status: int) -> str:
    """Assert the documented exit status and a single-line error without a traceback; return the line."""
    assert r.returncode == status, (r.returncode, r.stderr[-3000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    return lines[0]


def alias_bomb(levels: int) -> str:
    """Nested anchors under a scratch key: ``levels`` levels of ten aliases each, 10**levels values."""
    lines = ["x-a0: &a0 [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]"]
    lines += [f"x-a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- class 1: YAML expansion
def test_an_alias_bomb_is_a_config_error_not_a_runaway(tmp_path: Path) -> None:
    """9 levels in 449 bytes: 61 s of CPU then a MemoryError traceback before (24 GB RSS with 1.4 KB)."""
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text(alias_bomb(9))
    t0 = time.monotonic()
    r = limited("check", str(cfg), timeout=30)
    elapsed = time.monotonic() - t0
    line = one_line(r, EX_CONFIG)
    assert line.startswith(f"{cfg}:") and "expands to more than" in line, line
    assert elapsed < 20, elapsed


def test_deep_nesting_is_a_config_error(tmp_path: Path) -> None:
    """[[[[... 5000 deep: a RecursionError traceback in PyYAML's composer before."""
    cfg = tmp_path / "deep.yaml"
    cfg.write_text("x-deep: " + "[" * 5000 + "]" * 5000 + "\n")
    line = one_line(run_voxd("check", str(cfg)), EX_CONFIG)
    assert line == f"{cfg}:1: yaml: nested deeper than 64 levels"


def test_a_config_larger_than_the_bound_is_refused_unread(tmp_path: Path) -> None:
    """A valid but huge config (here 2 MiB of comment) is refused by size, before parsing."""
    cfg = tmp_path / "huge.yaml"
    cfg.write_text("chain: []\n" + ("#" + "x" * 1023 + "\n") * 2048)
    line = one_line(run_voxd("check", str(cfg)), EX_CONFIG)
    assert line == (f"{cfg}: cannot read config: larger than 256 KiB (a config is a few KB: is this the "
                    "right file?)")


# ------------------------------------------------------------------------ class 7: numbers in range
@pytest.mark.parametrize(("setting", "message"), [
    ("processing.window_ms=2e12", "processing.window_ms: Input should be less than or equal to 128"),
    ("output.hwm=1099511627776", "output.hwm: Input should be less than or equal to 100000"),
    ("output.wait_for_subscriber_s=1e12",
     "output.wait_for_subscriber_s: Input should be less than or equal to 3600"),
    ("chain.0.cutoff_hz=.nan", "chain.0.cutoff_hz: Input should be a finite number"),
])
def test_numbers_out_of_range_are_config_errors(setting: str, message: str, tmp_path: Path,
                                                recording: Path) -> None:
    """``window_ms: 2e12`` was a 233 TiB allocation traceback; a huge ``hwm`` or ``wait_for_subscriber_s``
    passed ``voxd check`` and overflowed in ``voxd run``."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"capture: {{type: file, path: {recording}}}\nchain: [{{stage: highpass}}]\n")
    line = one_line(limited("check", str(cfg), "--set", setting), EX_CONFIG)
    assert line == f"--set {setting}: {message}"


# ------------------------------------------------------------------ class 5: undecodable audio, outputs
def damaged_flac(tmp_path: Path, how: str) -> Path:
    """The 4-mic demo recording as FLAC, truncated to a third or with 4 KB of its middle scrambled."""
    data = bytearray((ROOT / "demo" / "respeaker4-kitchen.flac").read_bytes())
    if how == "truncated":
        del data[len(data) // 3:]
    else:
        mid = len(data) // 2
        data[mid:mid + 4000] = bytes((b * 7 + 13) & 255 for b in data[mid:mid + 4000])
    path = tmp_path / f"{how}.flac"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("how", ["truncated", "corrupt"])
def test_process_on_an_undecodable_flac_is_exit_65_and_leaves_no_output(how: str, tmp_path: Path) -> None:
    """A LibsndfileError traceback ("flac decoder lost sync", "psf_fseek() failed") and exit 1 before."""
    src, out = damaged_flac(tmp_path, how), tmp_path / "out.wav"
    line = one_line(run_voxd("process", "-q", "--config", "config/mono.yaml", str(src), str(out)), EX_DATAERR)
    assert line.startswith(f"voxd: {src}: cannot read audio: decoding stopped after "), line
    assert not out.exists()


@pytest.mark.parametrize("target", ["a directory", "/proc"])
def test_an_output_that_cannot_be_written_fails_before_processing(target: str, tmp_path: Path) -> None:
    """A traceback, and only after processing the whole input, before. The input here would fail with
    65 part way: exit 73 proves the output was checked first."""
    src = damaged_flac(tmp_path, "truncated")
    out = tmp_path if target == "a directory" else Path("/proc/voxd-test.wav")
    r = run_voxd("process", "-q", "--config", "config/mono.yaml", str(src), str(out))
    line = one_line(r, EX_CANTCREAT)
    reason = "Is a directory" if target == "a directory" else "No such file or directory"
    assert line == f"voxd: cannot write {out}: {reason}"
    r = run_voxd("process", "-q", "--config", "config/mono.yaml", "--out-dir", "/proc/voxd-test", str(src))
    assert one_line(r, EX_CANTCREAT) == "voxd: cannot write to /proc/voxd-test: No such file or directory"


# ------------------------------------------------------------------ class 10: process memory is flat
# The real CLI entry (voxd.cli.main), in a fresh interpreter that reports its own peak RSS at the end.
# VmHWM belongs to the process's own memory map, made at exec; wait4's ru_maxrss would not do: Linux
# carries the parent's high-water mark across vfork + exec (here: pytest's hundreds of MB).
_PEAK = ("import sys; from voxd.cli import main; rc = main(sys.argv[1:]); "
         "hwm = [line for line in open('/proc/self/status') if line.startswith('VmHWM')][0]; "
         "print(hwm, file=sys.stderr); sys.exit(rc)")


def peak_rss_kb(*args: str) -> int:
    """Peak RSS (kB) of ``voxd ARGS`` run to completion (exit 0 asserted)."""
    r = subprocess.run([sys.executable, "-c", _PEAK, *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    return int(r.stderr.strip().splitlines()[-1].split()[1])


def test_process_memory_does_not_grow_with_the_input(tmp_path: Path) -> None:
    """205 MB for 3 min and 574 MB for 30 min before (the output was collected, then written): now
    streamed. A 10 s and a 5 min input through the same chain peak within a few MB of each other."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("capture: {type: file, path: x.wav}\nchain: [{stage: gain, db: -3}]\n")
    rng = np.random.default_rng(0)
    peaks = []
    for seconds in (10, 300):
        src = tmp_path / f"in{seconds}.wav"
        sf.write(src, (rng.standard_normal(seconds * 16000) * 3000).astype(np.int16), 16000)
        peaks.append(peak_rss_kb("process", "-q", "--config", str(cfg), str(src), str(tmp_path / "out.wav")))
        assert sf.info(tmp_path / "out.wav").frames == seconds * 16000
    print(f"\npeak RSS: 10 s input {peaks[0] / 1024:.1f} MB, 300 s input {peaks[1] / 1024:.1f} MB")
    assert peaks[1] - peaks[0] < 6 * 1024, peaks  # the 300 s output alone is 19 MB as float32


# ---------------------------------------------------------------- class 4: one bad sample, not a dead stream
def _db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(x.astype(np.float64) ** 2) + 1e-20))


@pytest.mark.parametrize("config", ["mono", "default", "respeaker-4mic-hat"])
def test_a_nan_and_an_inf_burst_do_not_poison_the_shipped_chains(config: str, tmp_path: Path) -> None:
    """A float WAV with one NaN (at 1 s) and 200 ms of +inf (at 2 s): before, config/mono.yaml output
    nothing but NaN (written as silence) from the first one to the end, the array chains zeros. Now
    the bad samples are dropped and the stages restart: from 1 s after the burst, the output is as loud
    as the output of the clean recording (within 1 dB)."""
    x, rate = sf.read(ROOT / "demo" / "respeaker4-kitchen.flac", dtype="float32", always_2d=True)
    x = x[: 5 * rate]
    clean, bad = tmp_path / "clean.wav", tmp_path / "bad.wav"
    sf.write(clean, x, rate, subtype="FLOAT")
    y = x.copy()
    y[rate, 0] = np.nan
    y[2 * rate : int(2.2 * rate)] = np.inf
    sf.write(bad, y, rate, subtype="FLOAT")
    # one command for both files: each input gets a fresh pipeline and chain (voxd.runtime.process_file),
    # so the outputs are those of two separate runs, and the interpreter, plugins and scipy load once
    r = run_voxd("process", "-q", "--config", f"config/{config}.yaml", "--out-dir", str(tmp_path / "out"),
                 str(clean), str(bad))
    assert r.returncode == 0 and r.stderr == "", r.stderr
    outs = {name: sf.read(tmp_path / "out" / f"{name}.wav", dtype="float64")[0] for name in ("clean", "bad")}
    # "before": up to 0.1 s ahead of the NaN, since a chain with look-ahead (mono.yaml's DeepFilterNet3:
    # 33 ms) computes its last output samples before the NaN from input after it
    before, after = slice(0, int(0.9 * rate)), slice(int(3.2 * rate), None)
    assert _db(outs["bad"][before]) == pytest.approx(_db(outs["clean"][before]), abs=0.01)
    assert _db(outs["bad"][after]) == pytest.approx(_db(outs["clean"][after]), abs=1.0)
    assert _db(outs["bad"][after]) > -40


def test_a_signal_scaled_by_1e30_is_dropped_not_turned_into_nan(tmp_path: Path) -> None:
    """1e30 times the recording gave an all-NaN output (written as silence); its samples are now treated
    as lost (60 dB over full scale is no measurement): silence, and the chain stays usable, so the
    recording that follows in the same file comes out as it would alone."""
    x, rate = sf.read(ROOT / "demo" / "respeaker4-kitchen.flac", dtype="float32", always_2d=True)
    x = x[: 4 * rate, :1]
    src = tmp_path / "huge.wav"
    sf.write(src, np.concatenate([x[: 2 * rate] * np.float32(1e30), x[2 * rate :]]), rate, subtype="FLOAT")
    r = run_voxd("process", "-q", "--config", "config/mono.yaml", str(src), str(tmp_path / "out.wav"))
    assert r.returncode == 0, r.stderr
    out, _ = sf.read(tmp_path / "out.wav", dtype="float64")
    assert not out[: 2 * rate - 400].any()
    assert _db(out[int(3 * rate) :]) > -40


# ------------------------------------------------------------------------ class 9: local sockets
@pytest.mark.parametrize("mode", [None, 0o600])
def test_ipc_socket_files_get_an_explicit_mode_and_are_removed_on_exit(mode: int | None, tmp_path: Path,
                                                                      recording: Path) -> None:
    """The daemon runs with umask 000, which used to make its ipc:// socket world-connectable (0777),
    and the file stayed behind after exit. Now: 0660 (owner and group) or ``output.ipc_mode``, and gone
    after a clean stop."""
    sock = tmp_path / "run" / "voxd.sock"
    cfg = tmp_path / "c.yaml"
    extra = "" if mode is None else f", ipc_mode: '{mode:o}'"
    cfg.write_text(f"capture: {{type: file, path: {recording}, realtime: true, loop: true}}\n"
                   f"output: {{endpoints: ['ipc://{sock}']{extra}}}\nchain: [{{stage: mix}}]\n")
    daemon = subprocess.Popen([sys.executable, "-m", "voxd", "run", "--config", str(cfg)], cwd=ROOT,
                              stderr=subprocess.PIPE, text=True, preexec_fn=lambda: os.umask(0))
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert daemon.poll() is None and time.monotonic() < deadline, daemon.stderr
            time.sleep(0.02)
        assert stat.S_ISSOCK(sock.stat().st_mode)
        assert stat.S_IMODE(sock.stat().st_mode) == (0o660 if mode is None else mode)
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=20)
    assert daemon.returncode == 0, err
    assert not sock.exists(), "the socket file is removed on exit"


def test_an_abstract_ipc_socket_needs_curve(recording: Path, tmp_path: Path) -> None:
    """``ipc://@name`` has no file and so no permissions: any local user could subscribe. It was bound
    without CURVE as a local endpoint; now it is refused like a network endpoint."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"capture: {{type: file, path: {recording}}}\noutput: {{endpoints: ['ipc://@voxd-test']}}\n")
    line = one_line(run_voxd("check", str(cfg)), EX_CONFIG)
    assert line == (f"{cfg}:2: output.endpoints.0: 'ipc://@voxd-test' is an abstract socket (no file, so "
                    "no permissions: every local user could connect): binding it needs CURVE keys "
                    "(output.curve; see 'voxd keygen') or an explicit output.insecure: true")


# ------------------------------------------------------------------- class 8: a model file that is not there
def test_a_missing_denoise_model_is_a_config_error(tmp_path: Path, recording: Path) -> None:
    """``denoise: {model: /nonexistent.onnx}`` passed ``voxd check`` and ``voxd process`` exited 0 with
    unprocessed audio. (Fixed in the denoise plugin; this guards it through the CLI. A file that exists
    but does not load as a model is still only found at run time: see the issue's note.)"""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"capture: {{type: file, path: {recording}}}\n"
                   "chain:\n  - {stage: mix}\n  - {stage: denoise, model: /nonexistent.onnx}\n")
    expected = f"{cfg}:4: chain.1.model: model file '/nonexistent.onnx' does not exist"
    assert one_line(run_voxd("check", str(cfg)), EX_CONFIG) == expected
    out = tmp_path / "out.wav"
    r = run_voxd("process", "-q", "--config", str(cfg), str(recording), str(out))
    assert one_line(r, EX_CONFIG) == expected
    assert not out.exists()
