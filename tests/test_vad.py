"""The ``vad`` stage: smoothing rules, both engines on the demo recording (clean, with added noise, and
pure noise), block-size and reset behaviour, ``voxd process --vad-out`` through the real CLI, and the
daemon publishing speech events to a subscriber process over tcp://."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import signal
from voxd_vad.smoothing import SPEECH_END, SPEECH_START, Smoother, SmoothingSamples
from voxd_vad.stage import ENGINE_DEFAULTS, Vad, VadParams

from tests.conftest import ROOT, run_with_subscriber
from voxd.chain import build_chain
from voxd.commands.process import speech_segments
from voxd.config import load_config
from voxd.frame import AudioFormat, Flags, Frame, header_side
from voxd.runtime import process_file
from voxd.stage import FormatError, StageContext

RATE = 16000
DEMO = ROOT / "demo" / "respeaker4-kitchen.flac"
LABELS = [(s["start_s"], s["end_s"]) for s in
          json.loads((ROOT / "demo" / "respeaker4-kitchen.json").read_text())["speech"]["segments"]]
ENGINES = ("webrtc", "silero")
PRE_ROLL_S = VadParams().pre_roll_ms / 1000
ONSET_LATE_S = 0.2  # how late a detected onset may be (soft onsets: "Hello" starts with an /h/)
ONSET_EARLY_S = 0.1  # how early, besides the pre-roll (noise just before a word can join its burst)
OFFSET_EARLY_S = 0.1  # how early a detected offset may be (a trailing unvoiced sound)
CHAIN = "chain:\n  - {stage: highpass, cutoff_hz: 80, order: 2}\n  - {stage: mix}\n  - {stage: vad%s}\n"

Events = list[tuple[str, int]]


@functools.cache
def demo_mono() -> np.ndarray:
    """The demo recording down-mixed to one channel, float32 ``(1, n)`` (8 s, 16 kHz)."""
    x, rate = sf.read(DEMO, dtype="float32", always_2d=True)
    assert rate == RATE
    return np.ascontiguousarray(x.mean(axis=1)[None])


def make_stage(channels: int = 1, rate: int = RATE, **params) -> tuple[Vad, Events]:
    """An opened ``vad`` stage and the list its events go to, as ``(type, pts)``."""
    stage = Vad(VadParams(**params), "vad")
    fmt = AudioFormat(rate, channels, rate // 100)
    stage.accept(fmt)
    events: Events = []

    def emit(type: str, pts: int | None = None, **fields) -> None:
        assert fields == {"stage": "vad"}
        assert pts is not None
        events.append((type, pts))

    stage.open(StageContext(rate=rate, emit=emit))
    return stage, events


def feed(stage: Vad, x: np.ndarray, cuts: list[int] | None = None, pts0: int = 0) -> list[Frame]:
    """Push ``x`` ``(channels, n)`` through ``stage`` in frames of ``cuts`` samples (cycled; default the
    10 ms hop); checks that the input is never mutated and returns the output frames."""
    cuts = cuts or [stage.input_format.frame if stage.input_format else 160]
    out, pos, i = [], 0, 0
    while pos < x.shape[1]:
        n = cuts[i % len(cuts)]
        block = np.ascontiguousarray(x[:, pos : pos + n])
        before = block.copy()
        frame = stage.process(Frame(block, i, pts0 + pos, 0.0, RATE))
        np.testing.assert_array_equal(block, before)
        assert frame.samples is block  # audio passes through untouched
        out.append(frame)
        pos += n
        i += 1
    return out


def check_alternation(events: Events) -> list[tuple[int, int]]:
    """Assert strict alternation starting with a start, non-decreasing pts, segments not overlapping;
    return the segments ``(start, end)`` in samples (a trailing start is left open: end -1)."""
    segments: list[tuple[int, int]] = []
    for k, (kind, pts) in enumerate(events):
        assert kind == (SPEECH_START if k % 2 == 0 else SPEECH_END), f"event {k}: {events}"
        if kind == SPEECH_START:
            assert not segments or pts >= segments[-1][1], "a pre-roll reached back into the last segment"
            segments.append((pts, -1))
        else:
            assert pts > segments[-1][0]
            segments[-1] = (segments[-1][0], pts)
    return segments


def frames_f1(segments_s: list[tuple[float, float]], labels: list[tuple[float, float]],
              seconds: float) -> float:
    """Frame-level speech F1 with 10 ms frames, a frame counting as speech if its centre lies inside
    a segment (the shared benchmark's rule)."""
    centres = (np.arange(round(seconds / 0.01)) + 0.5) * 0.01

    def mask(segs: list[tuple[float, float]]) -> np.ndarray:
        m = np.zeros(centres.shape, bool)
        for s, e in segs:
            m |= (centres >= s) & (centres < e)
        return m

    ref, hyp = mask(labels), mask(segments_s)
    tp = np.sum(ref & hyp)
    return float(2 * tp / (2 * tp + np.sum(ref ^ hyp)))


def assert_brackets_labels(segments_s: list[tuple[float, float]], engine: str, labels=LABELS) -> None:
    """One detected segment per labelled one, starting from the pre-roll (+ ONSET_EARLY_S) before to
    ONSET_LATE_S after the labelled start and ending from OFFSET_EARLY_S before to the hangover after
    the labelled end."""
    end_s = ENGINE_DEFAULTS[engine]["end_ms"] / 1000
    assert len(segments_s) == len(labels), segments_s
    for (s, e), (ls, le) in zip(segments_s, labels, strict=True):
        assert ls - PRE_ROLL_S - ONSET_EARLY_S <= s <= ls + ONSET_LATE_S, (segments_s, labels)
        assert le - OFFSET_EARLY_S <= e <= le + end_s, (segments_s, labels)


def write_config(path: Path, audio: Path, vad: str = "", output: str = "") -> Path:
    path.write_text(f"capture: {{type: file, path: {audio}}}\n" + CHAIN % vad + output)
    return path


# ------------------------------------------------------------------------------------------ smoothing

def smoother(start=3, min_speech=0, end=5, pre=2, post=1) -> Smoother:
    """A smoother whose durations count 1-sample units: unit k is the sample range [k, k + 1)."""
    return Smoother(SmoothingSamples(start, min_speech, end, pre, post))


def push_all(sm: Smoother, evidence: str) -> Events:
    """Evidence string, one unit per character: '.' none, 'w' weak, 'S' strong."""
    out = []
    for k, c in enumerate(evidence):
        ev = sm.push(c in "wS", c == "S", k, k + 1)
        if ev is not None:
            out.append(ev)
    return out


def test_confirmation_hangover_pre_and_post_roll():
    # a burst starting at 10 with 3 strong units confirms at unit 13; the onset minus pre-roll is 8
    events = push_all(smoother(), "." * 10 + "wSwSS" + "SS" + "....." + "...")
    # last renewal: unit 16 ends at 17; five units without renewal end it; reported at 17 + post 1
    assert events == [(SPEECH_START, 8), (SPEECH_END, 18)]


def test_a_burst_without_enough_strong_evidence_is_dropped():
    assert push_all(smoother(), "..wSwS..wS.w..SS.") == []  # at most 2 strong units per burst


def test_isolated_strong_units_do_not_sustain_a_segment():
    # after the segment, one strong unit every 3 units (each in its own burst): they never renew it
    events = push_all(smoother(end=5), "SSSS" + ".S." * 6)
    assert events == [(SPEECH_START, 0), (SPEECH_END, 5)]
    # two strong units in a row do renew it
    events = push_all(smoother(end=5), "SSSS" + "..SS" * 6 + "......")
    assert events == [(SPEECH_START, 0), (SPEECH_END, 4 + 4 * 6 + 1)]


def test_minimum_speech_drops_short_segments_without_any_event():
    sm = smoother(start=2, min_speech=8, end=3, pre=0, post=1)
    assert push_all(sm, "SSSS" + "....") == []  # would be reported 5 long: dropped
    sm = smoother(start=2, min_speech=8, end=3, pre=0, post=1)
    # confirmed at 2, but speech_start only once the segment is 8 long (at unit 6, pts still 0)
    assert push_all(sm, "SSSSSSS....") == [(SPEECH_START, 0), (SPEECH_END, 8)]


def test_pre_roll_never_reaches_into_the_previous_segment_or_before_zero():
    events = push_all(smoother(pre=50, end=3, post=0), "SSS" + "...." + "SSS" + "....")
    assert events == [(SPEECH_START, 0), (SPEECH_END, 3), (SPEECH_START, 3), (SPEECH_END, 10)]


def test_finish_ends_an_open_segment_and_reset_takes_a_floor():
    sm = smoother()
    assert push_all(sm, "SSSS") == [(SPEECH_START, 0)]
    assert sm.finish(4) == (SPEECH_END, 4) and sm.finish(4) is None
    sm.reset(floor=10)
    assert [sm.push(True, True, k, k + 1) for k in range(10, 13)][-1] == (SPEECH_START, 10)


@settings(max_examples=60, deadline=None)
@given(evidence=st.text(".wS", max_size=300), start=st.integers(0, 6), min_speech=st.integers(0, 12),
       end=st.integers(0, 10), pre=st.integers(0, 8), post=st.integers(0, 10))
def test_smoother_events_alternate_and_respect_the_durations(evidence, start, min_speech, end, pre, post):
    post = min(post, end)
    sm = smoother(start, min_speech, end, pre, post)
    events = push_all(sm, evidence)
    final = sm.finish(len(evidence))
    segments = check_alternation(events + ([final] if final else []))
    for s, e in segments:
        assert 0 <= s < e <= len(evidence)
        assert e - s >= min(min_speech, len(evidence) - s) or e == len(evidence)


# ------------------------------------------------------------------------------------------ the stage

@pytest.mark.parametrize("engine", ENGINES)
def test_demo_speech_segments_bracket_the_labels(engine: str, tmp_path: Path):
    """The real chain (high-pass, down-mix, vad) on the real 4-mic recording, through process_file."""
    cfg = write_config(tmp_path / "c.yaml", DEMO, f", engine: {engine}")
    result = process_file(load_config(str(cfg)), str(DEMO))
    events = [(e["type"], e["pts"]) for e in result.events]
    assert all(e["stage"] == "vad" for e in result.events)
    check_alternation(events)
    segments = speech_segments(result.events, RATE, 8.0)
    assert_brackets_labels(segments, engine)
    assert frames_f1(segments, LABELS, 8.0) >= 0.9
    for e in result.events:  # the daemon's numbers: seq of the 20 ms frame that holds pts, seconds
        assert e["seq"] == e["pts"] // 320 and e["t_s"] == round(e["pts"] / RATE, 4)


@pytest.mark.parametrize("engine", ENGINES)
def test_demo_with_added_noise_still_brackets_the_labels(engine: str):
    rng = np.random.default_rng(7)
    x = demo_mono()
    noisy = (x + rng.standard_normal(x.shape).astype(np.float32) * np.float32(10 ** (-40 / 20)))
    stage, events = make_stage(engine=engine)
    feed(stage, noisy)
    stage.close()
    segments = [(s / RATE, e / RATE) for s, e in check_alternation(events)]
    assert_brackets_labels(segments, engine)


def noise(kind: str, seconds: float = 6.0, dbfs: float = -30.0) -> np.ndarray:
    """Synthetic noise without speech, float32 ``(1, n)`` at ``dbfs`` RMS."""
    rng = np.random.default_rng(3)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    if kind == "white":
        x = rng.standard_normal(n)
    elif kind == "pink":
        x = signal.lfilter([0.049922035, -0.095993537, 0.050612699, -0.004408786],
                           [1, -2.494956002, 2.017265875, -0.522189400], rng.standard_normal(n))
    elif kind == "hum":  # mains hum with harmonics: periodic, like a vowel's pitch
        x = sum(np.sin(2 * np.pi * 50 * k * t) / k for k in range(1, 10))
    else:  # keyboard-like clicks
        x = np.zeros(n)
        for i in rng.integers(0, n - 200, int(6 * seconds)):
            x[i : i + 200] += rng.standard_normal(200) * np.exp(-np.arange(200) / 30)
    x = x - x.mean()
    return (x / np.sqrt(np.mean(x**2)) * 10 ** (dbfs / 20)).astype(np.float32)[None]


def scaled_to(x: np.ndarray, dbfs: float) -> np.ndarray:
    """``x`` scaled so that its labelled speech has an RMS of ``dbfs`` (float32, same shape)."""
    m = np.zeros(x.shape[-1], bool)
    for a, b in LABELS:
        m[round(a * RATE) : round(b * RATE)] = True
    rms = float(np.sqrt(np.mean(x[..., m] ** 2)))
    return (x * np.float32(10 ** (dbfs / 20) / rms)).astype(np.float32)


@pytest.mark.parametrize("dbfs", [-50.0, -60.0])
def test_webrtc_hears_a_quiet_talker_through_its_level_normalised_copy(dbfs: float):
    """WebRTC VAD's fixed energy threshold misses a -50 dBFS talker; the normalised copy does not."""
    quiet = scaled_to(demo_mono(), dbfs)
    stage, events = make_stage(engine="webrtc")
    feed(stage, quiet)
    stage.close()
    segments = [(s / RATE, e / RATE) for s, e in check_alternation(events)]
    assert frames_f1(segments, LABELS, 8.0) >= 0.85
    assert stage.engine.gain_db > 20.0  # type: ignore[attr-defined]
    raw, raw_events = make_stage(engine="webrtc", max_gain_db=0.0)  # the detector as it was
    feed(raw, quiet)
    raw.close()
    raw_segments = [(s / RATE, e / RATE) for s, e in check_alternation(raw_events)]
    assert frames_f1(raw_segments, LABELS, 8.0) < 0.5


def test_the_normalised_copy_is_never_lowered():
    """At a normal level the copy WebRTC hears is the input itself (gain 0 dB)."""
    stage, _ = make_stage(engine="webrtc")
    feed(stage, scaled_to(demo_mono(), -20.0))
    assert stage.engine.gain_db == 0.0  # type: ignore[attr-defined]


@pytest.mark.parametrize("dbfs", [-30.0, -65.0])
@pytest.mark.parametrize("kind", ["white", "pink", "hum", "clicks"])
@pytest.mark.parametrize("engine", ENGINES)
def test_noise_alone_is_not_speech(engine: str, kind: str, dbfs: float):
    """Also quiet noise (-65 dBFS), which WebRTC hears raised by its level normalisation."""
    stage, events = make_stage(engine=engine)
    frames = feed(stage, noise(kind, dbfs=dbfs))
    stage.close()
    assert events == []
    assert not any(f.side["speech"] for f in frames)


def test_webrtc_alone_takes_clicks_for_speech_the_gate_and_voicing_do_not():
    """Why the WebRTC engine has a noise gate and a voicing check: without them, clicks start segments."""
    stage, events = make_stage(snr_gate_db=0, voicing=0)
    feed(stage, noise("clicks"))
    assert events


@pytest.mark.parametrize("engine", ENGINES)
def test_side_values_on_every_frame(engine: str):
    stage, events = make_stage(engine=engine)
    frames = feed(stage, demo_mono())
    segments = check_alternation(events)
    # the flag is causal: up from the confirmation, down when the end is decided, which is the
    # hangover minus the post-roll after the segment's end
    params = VadParams(engine=engine)
    decided = round((params.end - params.post_roll) / 1000 * RATE) + 512
    for f in frames:
        assert isinstance(f.side["speech"], bool) and 0.0 <= f.side["speech_prob"] <= 1.0
        header = header_side(f.side)
        assert header["speech"] is f.side["speech"] and isinstance(header["speech_prob"], float)
        if f.side["speech"]:
            assert any(s <= f.pts and f.pts < e + decided for s, e in segments)
    # the flag is up in the middle of every labelled segment
    for s, e in LABELS:
        assert frames[round((s + e) / 2 * 100)].side["speech"]
    # Silero's probability is a probability; WebRTC's a running fraction: both high in speech
    mid = [frames[round((s + e) / 2 * 100)].side["speech_prob"] for s, e in LABELS]
    assert min(mid) > 0.5


# ------------------------------------------------------------------------------------------ streaming

def excerpt() -> np.ndarray:
    """0.5-3.5 s of the demo: one whole labelled segment and the start of the next."""
    return np.ascontiguousarray(demo_mono()[:, int(0.5 * RATE) : int(3.5 * RATE)])


@functools.cache
def reference_events(engine: str) -> Events:
    stage, events = make_stage(engine=engine)
    feed(stage, excerpt())
    stage.close()
    return events


@pytest.mark.parametrize("engine", ENGINES)
@settings(max_examples=6, deadline=None)
@given(cuts=st.lists(st.integers(20, 1200), min_size=1, max_size=6))  # 1-sample frames: see below
def test_events_do_not_depend_on_how_the_stream_is_cut(engine: str, cuts: list[int]):
    stage, events = make_stage(engine=engine)
    feed(stage, excerpt(), cuts)
    stage.close()
    assert events == reference_events(engine)
    assert len(events) == 4


def test_one_sample_frames_give_the_same_events():
    stage, events = make_stage()
    feed(stage, excerpt()[:, : int(1.2 * RATE)], [1, 2, 157])
    ref = [e for e in reference_events("webrtc") if e[1] < int(1.2 * RATE)]
    assert events == ref and events


@pytest.mark.parametrize("engine", ENGINES)
def test_reset_in_speech_ends_the_segment_then_the_stage_starts_afresh(engine: str):
    x = excerpt()
    stage, events = make_stage(engine=engine)
    mid = int(1.0 * RATE)  # 1.5 s into the demo: inside "Hello world"
    feed(stage, x[:, :mid])
    assert events == [reference_events(engine)[0]]
    stage.reset()
    assert events[-1] == (SPEECH_END, mid)  # at the last sample seen
    n = len(events)
    feed(stage, x, pts0=mid)  # the same audio again, after the discontinuity
    stage.close()
    assert events[n:] == [(kind, pts + mid) for kind, pts in reference_events(engine)]
    check_alternation(events)


def test_a_discontinuity_flag_resets_the_stage_through_the_chain(tmp_path: Path):
    wav = tmp_path / "mono.wav"
    sf.write(wav, demo_mono()[0], RATE, subtype="PCM_16")
    loaded = load_config(str(write_config(tmp_path / "c.yaml", wav)))
    chain = build_chain(loaded, 1)
    events: list[tuple[str, int]] = []
    chain.open(RATE, emit=lambda type, pts=None, **f: events.append((type, pts)))
    x = demo_mono()
    for i in range(x.shape[1] // 160):
        flags = Flags.DISCONTINUITY if i == 150 else Flags.NONE  # 1.5 s: inside "Hello world"
        chain.process(Frame(np.ascontiguousarray(x[:, i * 160 : (i + 1) * 160]), i, i * 160, 0.0, RATE,
                            flags=flags))
    chain.close()
    segments = check_alternation(events)
    assert segments[0][1] == 150 * 160  # ended at the last sample before the discontinuity
    assert segments[1][0] >= 150 * 160  # and the next one never reaches back across it
    # the stage starts afresh (WebRTC's noise model, the noise floor): the rest of "world" is lost,
    # the next sentences are found as before
    assert_brackets_labels([(s / RATE, e / RATE) for s, e in segments[-2:]], "webrtc", LABELS[1:])


def test_close_ends_an_open_segment_at_the_last_sample_and_is_safe_anytime():
    stage, events = make_stage()
    feed(stage, excerpt()[:, : int(1.0 * RATE) + 37])
    stage.close()
    assert events[-1] == (SPEECH_END, int(1.0 * RATE) + 37)
    stage, events = make_stage()
    feed(stage, noise("white", 1.0))
    stage.close()
    assert events == []
    never_opened = Vad(VadParams(), "vad")
    never_opened.reset()
    never_opened.close()


def test_pre_roll_moves_speech_start_back_by_exactly_its_length():
    starts = {}
    for pre in (0, 200):
        stage, events = make_stage(pre_roll_ms=pre)
        feed(stage, demo_mono())
        starts[pre] = [pts for kind, pts in events if kind == SPEECH_START]
    assert starts[0][0] - starts[200][0] == 200 * RATE // 1000
    assert all(a - b <= 200 * RATE // 1000 for a, b in zip(starts[0], starts[200], strict=True))


def test_channel_selects_the_reference_microphone():
    x = np.concatenate([noise("white", 8.0, -60.0), demo_mono()])  # channel 1 holds the speech
    for channel, expect_speech in ((0, False), (1, True)):
        stage, events = make_stage(channels=2, channel=channel)
        feed(stage, x)
        assert bool(events) is expect_speech


@pytest.mark.parametrize(("params", "rate", "channels", "message"), [
    ({"channel": 2}, 16000, 2, "channel 2 does not exist (channels 0-1)"),
    ({}, 22050, 1, "engine webrtc needs a chain rate of 8000, 16000, 32000, 48000 Hz"),
    ({"engine": "silero"}, 48000, 1, "engine silero needs a chain rate of 8000, 16000 Hz"),
])
def test_formats_the_stage_refuses(params, rate, channels, message):
    stage = Vad(VadParams(**params), "vad")
    with pytest.raises(FormatError, match=message.replace("(", r"\(").replace(")", r"\)")):
        stage.negotiate(AudioFormat(rate, channels, rate // 100))


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("rate", [8000, 16000])
def test_both_engines_run_at_8_khz_too(engine: str, rate: int):
    x = signal.resample_poly(demo_mono()[0], rate, RATE).astype(np.float32)[None]
    stage, events = make_stage(rate=rate, engine=engine)
    feed(stage, x)
    stage.close()
    segments = [(s / rate, e / rate) for s, e in check_alternation(events)]
    assert frames_f1(segments, LABELS, 8.0) >= 0.85


def test_config_mistakes_are_config_errors(voxd, tmp_path: Path):
    cfg = write_config(tmp_path / "c.yaml", DEMO, ", threshold: 0.6")
    r = voxd("check", str(cfg))
    assert r.returncode == 78 and "Traceback" not in r.stderr
    assert r.stderr.strip().startswith(f"{cfg}:5: chain.2")
    assert "threshold only applies to engine silero" in r.stderr
    cfg = write_config(tmp_path / "c.yaml", DEMO, ", engine: silero, post_roll_ms: 300")
    r = voxd("check", str(cfg))
    assert r.returncode == 78 and "post_roll_ms 300 must not exceed end_ms 200" in r.stderr


# ------------------------------------------------------------------------------------------ --vad-out

def test_vad_out_writes_one_json_line_per_input(voxd, tmp_path: Path):
    quiet = tmp_path / "quiet.wav"
    sf.write(quiet, noise("pink", 2.0)[0], RATE, subtype="PCM_16")
    demo = DEMO.relative_to(ROOT)  # a relative path: written back exactly as given
    cfg = write_config(tmp_path / "c.yaml", DEMO)
    out = tmp_path / "vad" / "segments.jsonl"
    r = voxd("process", "--config", str(cfg), "--out-dir", str(tmp_path / "out"), "--vad-out", str(out),
             str(demo), str(quiet))
    assert r.returncode == 0, r.stderr
    lines = out.read_text().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert list(first) == ["input", "segments"] and first["input"] == str(demo)
    assert second == {"input": str(quiet), "segments": []}
    assert lines[1] == json.dumps({"input": str(quiet), "segments": []})
    expected = speech_segments(process_file(load_config(str(cfg)), str(DEMO)).events, RATE, 8.0)
    assert first["segments"] == expected
    assert all(isinstance(v, float) for seg in first["segments"] for v in seg)
    assert_brackets_labels([tuple(s) for s in first["segments"]], "webrtc")
    assert (tmp_path / "out" / "respeaker4-kitchen.wav").exists()  # the audio is written as before


def test_vad_out_needs_a_voice_activity_detector(voxd, tmp_path: Path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"capture: {{type: file, path: {DEMO}}}\nchain: [{{stage: mix}}]\n")
    out = tmp_path / "segments.jsonl"
    r = voxd("process", "--config", str(cfg), "--out-dir", str(tmp_path / "out"), "--vad-out", str(out),
             str(DEMO))
    assert r.returncode == 64
    assert r.stderr.strip() == (f"voxd: --vad-out: the chain in {cfg} has no voice activity detector (no "
                                "stage provides 'speech'); add one, e.g. '- {stage: vad}'")
    assert not out.exists() and not (tmp_path / "out").exists()


def test_vad_out_unwritable_exits_73(voxd, tmp_path: Path):
    cfg = write_config(tmp_path / "c.yaml", DEMO)
    (tmp_path / "file").write_text("")
    r = voxd("process", "--config", str(cfg), "--out-dir", str(tmp_path / "out"), "--vad-out",
             str(tmp_path / "file" / "x.jsonl"), str(DEMO))
    assert r.returncode == 73 and r.stderr.startswith("voxd: cannot write") and "Traceback" not in r.stderr


def test_speech_segments_close_open_segments_and_keep_to_the_file():
    ev = [{"type": "speech_start", "pts": -5, "stage": "a"},
          {"type": "speech_start", "pts": 0, "stage": "b"},  # another detector's: ignored
          {"type": "speech_end", "pts": 8000, "stage": "a"},
          {"type": "speech_start", "pts": 12000, "stage": "a"}]  # still open at the end of the file
    assert speech_segments(ev, RATE, 1.0, "a") == [[0.0, 0.5], [0.75, 1.0]]
    assert speech_segments([{"type": "speech_start", "pts": 16000}], RATE, 1.0) == []  # at the very end


# ------------------------------------------------------------------------------------------ end to end



def test_daemon_publishes_speech_events_that_bracket_the_labelled_speech(tmp_path: Path, free_port: int,
                                                                         voxd):
    """``voxd run`` on the demo recording (real time) with a subscriber process on tcp://: the events
    arrive in order, alternate, and their seq values bracket each labelled segment."""
    endpoint = f"tcp://127.0.0.1:{free_port}"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"capture: {{type: file, path: {DEMO}, realtime: true}}\n" + CHAIN % "" +
                   f"output: {{endpoints: ['{endpoint}'], frame_ms: 20, wait_for_subscriber_s: 20}}\n")
    info = run_with_subscriber(cfg, endpoint, tmp_path / "sub")
    assert info["gaps"] == 0 and info["seqs"] == list(range(len(info["seqs"])))
    speech = [e for e in info["events"] if e["type"] in (SPEECH_START, SPEECH_END)]
    assert [e["type"] for e in info["events"]][-1] == "end_of_stream"
    segments = check_alternation([(e["type"], e["seq"]) for e in speech])
    assert all(e["stage"] == "vad" and e["seq"] == e["pts"] // 320 for e in speech)
    frame_s = 0.02
    end_s = ENGINE_DEFAULTS["webrtc"]["end_ms"] / 1000
    assert len(segments) == len(LABELS)
    for (s_seq, e_seq), (ls, le) in zip(segments, LABELS, strict=True):
        # the frame holding the start lies within [label start - pre-roll, label start + latency]
        assert ls - PRE_ROLL_S - ONSET_EARLY_S - frame_s <= s_seq * frame_s <= ls + ONSET_LATE_S
        assert le - OFFSET_EARLY_S - frame_s <= e_seq * frame_s <= le + end_s
    # the audio headers' speech flag is up in the middle of each labelled segment and down before
    # the first one
    flags = dict(zip(info["seqs"], info["speech"], strict=True))
    assert all(flags[round((ls + le) / 2 / frame_s)] for ls, le in LABELS)
    assert not any(flags[k] for k in range(int(LABELS[0][0] / frame_s) - 5))


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("gate", [True, False])
def test_frames_an_echo_canceller_marks_echo_only_are_not_speech(engine: str, gate: bool):
    """The demo's speech, every frame marked ``aec.echo_only`` (what an aec stage before the vad says of
    its own playback's residue): no segment with ``echo_gate`` on (the default), the usual ones off."""
    from voxd.side import AEC_ECHO_ONLY

    stage, events = make_stage(engine=engine, echo_gate=gate)
    x = demo_mono()
    for i, pos in enumerate(range(0, x.shape[1] - 160 + 1, 160)):
        stage.process(Frame(np.ascontiguousarray(x[:, pos:pos + 160]), i, pos, 0.0, RATE,
                            side={AEC_ECHO_ONLY: True}))
    stage.close()
    assert (len(events) >= 2) == (not gate), events
