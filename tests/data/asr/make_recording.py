"""Rebuild ``commands.flac`` and ``commands.json``: two English sentences synthesised with Debian's flite.

    apt-get install flite            # 2.2-5 on Debian 12
    .venv/bin/python tests/data/asr/make_recording.py

The recording is what ``tests/test_asr_examples.py`` replays through the daemon: a short lead-in, one
sentence, a pause long enough for any VAD to end the segment, the second sentence and a tail, with a
faint white noise floor throughout (digital silence is not what a microphone delivers). It is
deterministic: flite's output is, and the noise has a fixed seed.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

HERE = Path(__file__).resolve().parent
RATE = 16000  # flite's slt voice synthesises at 16 kHz, the chain rate: no resampling anywhere
VOICE = "slt"
SENTENCES = ["Please turn on the kitchen lights.", "What will the weather be like tomorrow morning?"]
LEAD_S, PAUSE_S, TAIL_S = 0.6, 1.0, 0.8
SPEECH_DBFS = -26.0  # RMS of the speech-active 20 ms frames, as tests/data/speech/
NOISE_DBFS = -60.0  # RMS of the white noise floor
ACTIVE_DBFS = -50.0  # a 20 ms frame above this level (before scaling) is speech


def synthesise(text: str) -> np.ndarray:
    """flite's waveform for ``text``, trimmed to its speech: float64 ``(n,)`` at RATE."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "s.wav"
        subprocess.run(["flite", "-voice", VOICE, "-t", text, "-o", str(wav)], check=True)
        x, rate = sf.read(wav, dtype="float64")
    assert rate == RATE, f"flite voice {VOICE} gave {rate} Hz"
    frame = RATE // 50
    n = len(x) // frame
    level = 10 * np.log10(np.mean(x[: n * frame].reshape(n, frame) ** 2, axis=1) + 1e-20)
    active = np.flatnonzero(level > ACTIVE_DBFS)
    return x[active[0] * frame:(active[-1] + 1) * frame]


def main() -> None:
    parts = [synthesise(s) for s in SENTENCES]
    speech = np.concatenate(parts)
    frame = RATE // 50
    n = len(speech) // frame
    power = np.mean(speech[: n * frame].reshape(n, frame) ** 2, axis=1)
    active = power > 10 ** (ACTIVE_DBFS / 10)
    gain = 10 ** (SPEECH_DBFS / 20) / np.sqrt(power[active].mean())

    pieces, segments, t = [np.zeros(round(LEAD_S * RATE))], [], LEAD_S
    for i, p in enumerate(parts):
        segments.append([round(t, 3), round(t + len(p) / RATE, 3)])
        t += len(p) / RATE
        pieces.append(p * gain)
        gap = PAUSE_S if i < len(parts) - 1 else TAIL_S
        pieces.append(np.zeros(round(gap * RATE)))
        t += round(gap * RATE) / RATE
    y = np.concatenate(pieces)
    y += 10 ** (NOISE_DBFS / 20) * np.random.default_rng(0).standard_normal(len(y))
    pcm = np.clip(np.rint(y * 32768), -32768, 32767).astype(np.int16)
    sf.write(HERE / "commands.flac", pcm, RATE, subtype="PCM_16")
    meta = {"file": "commands.flac", "rate": RATE, "duration_s": round(len(pcm) / RATE, 3),
            "voice": f"flite/{VOICE}", "sentences": SENTENCES, "text": " ".join(SENTENCES),
            "speech_segments_s": segments}
    # one key per line, values compact: reads well and diffs well
    lines = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in meta.items()]
    (HERE / "commands.json").write_text("{\n" + ",\n".join(lines) + "\n}\n")


if __name__ == "__main__":
    main()
