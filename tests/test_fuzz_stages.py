"""Fuzzing every stage with random finite and non-finite blocks (issue 16, class 4).

Each installed stage kind runs in the smallest real chain that feeds it (``vad -> noise -> wiener``
for ``wiener``, the 4-mic array for ``doa`` and ``beamform``...) through a real
:class:`~voxd.pipeline.Pipeline`, on 4-channel speech from the demo recording: 0.3 s, then a glitch of
one to four 10 ms blocks, then 1 s of the recording again. The glitch holds NaN, infinities, values
beyond the input limit (1e30, as a float file scaled by 1e30), denormals, silence or random values.

- Every published sample, and every side value a stage provides (noise PSD and covariance, speech
  probability, direction, gain...), stays finite, and no stage fails or yields a non-finite output.
- Recovery: a corrupt glitch (non-finite or beyond the limit) is exactly lost input: the whole output
  equals that of the same stream with the glitch's bad samples silenced and a discontinuity flagged
  on the first clean block (the stages reset there, as after an overrun), so nothing of the glitch
  survives in any state. For every stage but ``agc`` (whose reset keeps its gain and speech level, by
  design) that means the output from there on is what a freshly started chain gives. After a glitch
  of finite in-range values, output stays finite and bounded.

The chains are built from config text like any user's. The derandomized CI profile (tests/conftest.py)
replays the same examples each run.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import ROOT
from voxd.chain import Chain, build_chain
from voxd.config import load_config_text
from voxd.frame import SAMPLE_LIMIT, Flags, Frame
from voxd.pipeline import Pipeline
from voxd.runtime import open_chain
from voxd.sources.base import Block
from voxd.sources.file import read_audio

RATE, HOP = 16000, 160
LEAD, TAIL = 30, 100  # hops of clean audio before and after the glitch (0.3 s, 1 s)
ARRAY = "array: {preset: respeaker-4mic-hat}\n"

#: every installed stage kind (and the engines/methods with their own state), in a chain that feeds it
CHAINS: dict[str, str] = {
    "highpass": "[{stage: highpass, order: 4}]",
    "gain": "[{stage: gain, db: 20}]",
    "select": "[{stage: select, channels: [3, 0]}]",
    "mix": "[{stage: mix}]",
    "passthrough_stft": "[{stage: passthrough_stft}]",
    "vad": "[{stage: vad}]",
    "vad-silero": "[{stage: vad, engine: silero}]",
    "noise": "[{stage: vad}, {stage: noise}]",
    "wiener": "[{stage: vad}, {stage: noise}, {stage: wiener}]",
    "spectral_subtraction": "[{stage: vad}, {stage: noise}, {stage: spectral_subtraction}]",
    "doa": "[{stage: vad}, {stage: noise}, {stage: doa}]",
    "beamform-mvdr": "[{stage: vad}, {stage: noise}, {stage: doa}, {stage: beamform}, {stage: wiener}]",
    "beamform-mask": "[{stage: denoise, channels: [0], apply: false}, {stage: beamform, mask: denoise}, "
                     "{stage: wiener}]",
    "beamform-maskmodel": "[{stage: mask}, {stage: beamform, mask: model}, {stage: wiener}]",
    "beamform-das": "[{stage: vad}, {stage: noise}, {stage: doa}, {stage: beamform, method: delay_and_sum}]",
    "agc": "[{stage: vad}, {stage: agc}]",
    "agc-gate": "[{stage: agc, vad: false}]",
    "denoise": "[{stage: mix}, {stage: denoise}]",
}


def _reference() -> np.ndarray:
    x, rate = read_audio(str(ROOT / "demo" / "respeaker4-kitchen.flac"))
    assert rate == RATE and x.shape[0] == 4
    return np.ascontiguousarray(x[:, RATE : RATE + (LEAD + TAIL) * HOP])  # from 1 s: the talker speaks


REF = _reference()


def _chain(name: str) -> tuple[Chain, Any]:
    text = f"capture: {{type: file, path: x.wav}}\n{ARRAY}chain: {CHAINS[name]}\n"
    loaded = load_config_text(text, f"{name}.yaml")
    chain = build_chain(loaded, 4)
    open_chain(loaded, chain)
    return chain, loaded


def run(name: str, blocks: list[np.ndarray | Block]) -> tuple[np.ndarray, list[dict[str, Any]], Chain]:
    """Push ``blocks`` (sample arrays or whole blocks with flags) through a fresh pipeline with chain
    ``name``: (output samples, the side values of every chain frame, the chain)."""
    chain, _ = _chain(name)
    sides: list[dict[str, Any]] = []
    process = chain.process

    def spy(frame: Frame) -> Frame:  # the chain's own output frames carry every side value
        out = process(frame)
        sides.append(out.side)
        return out

    chain.process = spy  # type: ignore[method-assign]
    pipe = Pipeline(chain, RATE, HOP)
    frames = [f for b in blocks for f in pipe.push(b if isinstance(b, Block) else Block(b, 0.0))]
    frames += pipe.flush()
    chain.close()
    out = np.concatenate([f.samples for f in frames if f.topic == "audio"], axis=1)
    return out, sides, chain


_FRESH: dict[str, np.ndarray] = {}


def fresh(name: str, blocks: list[np.ndarray], is_tail: bool) -> np.ndarray:
    """What a freshly started chain makes of ``blocks`` (cached when they are the recording's tail)."""
    if not is_tail:
        return run(name, list(blocks))[0]
    if name not in _FRESH:
        _FRESH[name] = run(name, list(blocks))[0]
    return _FRESH[name]


SPECIAL = [math.nan, math.inf, -math.inf, 1e30, -1e30, 3.4e38, SAMPLE_LIMIT, -SAMPLE_LIMIT, 1e-40, 0.0]


@st.composite
def glitches(draw: st.DrawFn) -> np.ndarray:
    """1-4 hops of 4 channels: a base (silence, denormals, a constant, noise up to the limit or the
    recording itself) with 0-6 special values (NaN, +-inf, 1e30, the limit...) at random places."""
    hops = draw(st.integers(1, 4))
    n = hops * HOP
    base = draw(st.sampled_from(["speech", "zeros", "denormal", "constant", "noise", "limit-noise", "huge"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if base == "speech":
        x = REF[:, LEAD * HOP : LEAD * HOP + n].copy()
    elif base == "zeros":
        x = np.zeros((4, n), np.float32)
    elif base == "denormal":
        x = np.full((4, n), 1e-40, np.float32)
    elif base == "constant":
        x = np.full((4, n), draw(st.sampled_from([1.0, -1.0, 999.0])), np.float32)
    elif base == "noise":
        x = rng.uniform(-1, 1, (4, n)).astype(np.float32)
    elif base == "limit-noise":
        x = rng.uniform(-SAMPLE_LIMIT, SAMPLE_LIMIT, (4, n)).astype(np.float32)
    else:
        x = (REF[:, LEAD * HOP : LEAD * HOP + n] * np.float32(1e30)).astype(np.float32)
    for _ in range(draw(st.integers(0, 6))):
        x[draw(st.integers(0, 3)), draw(st.integers(0, n - 1))] = draw(st.sampled_from(SPECIAL))
    return x


def _finite_side(sides: list[dict[str, Any]]) -> None:
    for i, side in enumerate(sides):
        for key, value in side.items():
            if isinstance(value, np.ndarray) and value.dtype.kind in "fc":
                assert np.isfinite(value).all(), (i, key)
            elif isinstance(value, float | np.floating):
                assert math.isfinite(value), (i, key, value)


@pytest.mark.parametrize("name", sorted(CHAINS))
@given(glitch=glitches())
@settings(max_examples=6)
def test_a_glitch_leaves_the_output_finite_and_the_state_recovers(name: str, glitch: np.ndarray) -> None:
    lead, tail = REF[:, : LEAD * HOP], REF[:, LEAD * HOP :]
    blocks = [lead[:, i : i + HOP] for i in range(0, lead.shape[1], HOP)]
    blocks += [glitch[:, i : i + HOP] for i in range(0, glitch.shape[1], HOP)]
    blocks += [tail[:, i : i + HOP] for i in range(0, tail.shape[1], HOP)]
    out, sides, chain = run(name, blocks)
    assert np.isfinite(out).all()
    _finite_side(sides)
    assert [(s.name, s.errors, s.nonfinite) for s in chain.stages() if s.errors or s.nonfinite] == []
    with np.errstate(invalid="ignore"):
        bad = ~(np.abs(glitch) <= SAMPLE_LIMIT)
    if bad.any():
        # lost input: the bad samples silenced, the stages reset at the first clean block after each
        # corrupt one (the pipeline sees blocks, so a glitch may end in clean blocks)
        corrupt = [bool(bad[:, i : i + HOP].any()) for i in range(0, glitch.shape[1], HOP)]
        silenced = np.where(bad, np.float32(0), glitch)
        lost: list[np.ndarray | Block] = [*blocks[:LEAD]]
        lost += [silenced[:, i : i + HOP] for i in range(0, glitch.shape[1], HOP)]
        lost += blocks[LEAD + len(corrupt) :]
        ends = [i for i, c in enumerate(corrupt) if c and (i + 1 == len(corrupt) or not corrupt[i + 1])]
        resets = [LEAD + i + 1 for i in ends]
        for i in resets:
            lost[i] = Block(blocks[i], 0.0, Flags.DISCONTINUITY)
        np.testing.assert_array_equal(out, run(name, lost)[0])
        if not name.startswith("agc"):  # agc keeps gain and level across a reset, by design
            # from the last reset on, exactly what a freshly started chain makes of the audio
            r = resets[-1]
            expected = fresh(name, blocks[r:], is_tail=r == LEAD + len(corrupt))
            np.testing.assert_array_equal(out[:, r * HOP :], expected)
    else:
        assert np.abs(out).max() <= 1e5


# ------------------------------------------------------------------------- the chain's safety net
def test_a_stage_that_outputs_nan_is_reset_with_the_whole_chain() -> None:
    """The last line of defence: a stage (here a test stage with a bug) whose output is not finite gets
    its on_error policy (reset), a stage_error event names it, every stage restarts, and the output goes
    on finite. Before, the NaN reached every later stage's state for the rest of the stream."""
    from voxd.chain import StageNode
    from voxd.stage import Stage, StageParams

    class Nan(Stage):
        kind = "nan"
        Params = StageParams
        resets = 0

        def process(self, frame: Frame) -> Frame:
            x = frame.samples.copy()
            if frame.seq == 5:
                x[0, 3] = np.nan
            return frame.with_samples(x)

        def reset(self) -> None:
            Nan.resets += 1

    chain, _ = _chain("wiener")
    events: list[tuple[str, dict[str, Any]]] = []
    nan = Nan(StageParams(), "nan")
    nan.accept(chain.in_format)
    node = StageNode(nan, "nan", "reset")
    node.emit = lambda type, **f: events.append((type, f))
    chain.nodes.insert(0, node)
    outs = []
    for seq in range(12):
        frame = Frame(REF[:, seq * HOP : (seq + 1) * HOP].copy(), seq, seq * HOP, 0.0, RATE, Flags.NONE)
        outs.append(chain.process(frame).samples)
    assert all(np.isfinite(o).all() for o in outs)
    assert node.nonfinite == 1 and Nan.resets == 2  # its own policy, then the chain's reset
    assert [t for t, _ in events] == ["stage_error"] and "not finite" in events[0][1]["error"]
