"""Check an exported v2 denoiser: streaming ONNX == offline torch, reset, silence, and cost per hop.

(a) Runs the ONNX model hop by hop with onnxruntime (one thread) on a signal through voxd's own
    ``StftAnalysis`` / ``StftSynthesis`` and compares the output samples and the ``gain`` output with
    whole-sequence torch inference of the checkpoint it was exported from: max abs difference <= ``--tol``
    (1e-4). The signal is ``--wav`` (mono 16 kHz) or, by default, a synthetic test signal (harmonic
    "voice" with pauses in pink noise, -30 dBFS). A zero state must reproduce the first run exactly.
(b) Silence in, silence out: 2 s of digital zeros give exactly zero output.
(c) Times ``session.run`` per hop: one intra-op and one inter-op thread, sequential, batch 1 (the voxd
    stage's settings); ``--compare`` times other models (e.g. the shipped v1) in the same run.

Usage::

    V=/work/voxd-train/venv/bin/python
    $V train/denoise/check_onnx.py /work/voxd-train/export/denoise.onnx \\
        --checkpoint train/denoise/checkpoint.pt \\
        --compare plugins/voxd_denoise/models/denoise.onnx
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import soundfile as sf
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))  # the repository root, for voxd.stft
from export_onnx import load_checkpoint  # noqa: E402
from model import HOP, N_FFT, RATE, stft  # noqa: E402

from voxd.stft import StftAnalysis, StftSynthesis  # noqa: E402


def session(path: Path) -> ort.InferenceSession:
    """onnxruntime session as the voxd stage opens it: CPU, one thread, sequential."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def state_size(sess: ort.InferenceSession) -> int:
    """``S`` of the ``state`` input (its static shape, else the ``voxd.state_size`` metadata)."""
    shape = next(i.shape for i in sess.get_inputs() if i.name == "state")
    if isinstance(shape[1], int):
        return int(shape[1])
    return int(sess.get_modelmeta().custom_metadata_map["voxd.state_size"])


def stream_onnx(sess: ort.InferenceSession, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Enhance mono ``x`` (n,) hop by hop through voxd's STFT.

    Returns the output (n,) with the 10 ms delay removed and the ``gain`` outputs (hops, 161)."""
    an, syn = StftAnalysis(1, N_FFT, HOP), StftSynthesis(1, N_FFT, HOP)
    state = np.zeros((1, state_size(sess)), np.float32)
    pad = np.concatenate([x, np.zeros(HOP, np.float32)])  # flush the delay
    out, gains = [], []
    for a in range(0, pad.size - pad.size % HOP, HOP):
        for spec in an.push(pad[None, a : a + HOP]):
            inp = np.stack([spec.real, spec.imag], axis=-1).astype(np.float32)  # (1, 161, 2)
            enh, state, gain = sess.run(["enh", "state_out", "gain"], {"spec": inp, "state": state})
            gains.append(gain[0])
            out.append(syn.push((enh[..., 0] + 1j * enh[..., 1]).astype(np.complex64)))
    y = np.concatenate(out, axis=1)[0]
    return y[syn.delay_samples : syn.delay_samples + x.size], np.stack(gains)


def offline_torch(model: torch.nn.Module, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Whole-sequence torch inference of ``x`` (n,), synthesised with voxd's ``StftSynthesis``;
    also the per-bin gain (hops, 161)."""
    n = x.size
    pad = np.concatenate([x, np.zeros(HOP + (-n) % HOP, np.float32)])
    with torch.no_grad():
        spec = torch.view_as_real(stft(torch.from_numpy(pad)[None])).contiguous()
        y, gain, _ = model(spec, model.initial_state(1))
    yc = (y[0, ..., 0] + 1j * y[0, ..., 1]).numpy().astype(np.complex64)
    syn = StftSynthesis(1, N_FFT, HOP)
    out = np.concatenate([syn.push(f[None]) for f in yc], axis=1)[0]
    return out[syn.delay_samples : syn.delay_samples + n], gain[0].numpy()


def test_signal(seconds: float = 4.0, seed: int = 0) -> np.ndarray:
    """A harmonic 'voice' (f0 110 .. 220 Hz glides, syllable-rate envelope, pauses) in pink noise at
    10 dB SNR, speech at -30 dBFS; float32 (n,)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    f0 = 165 + 55 * np.sin(2 * np.pi * 0.7 * t)
    ph = 2 * np.pi * np.cumsum(f0) / RATE
    v = sum(np.sin(k * ph) / k for k in range(1, 30) if k * 220 < RATE / 2)
    env = np.clip(np.sin(2 * np.pi * 3.0 * t), 0, None) * (np.sin(2 * np.pi * 0.35 * t) > -0.3)
    v = v * env
    v *= 10 ** (-30 / 20) / np.sqrt(np.mean(v[env > 0.1] ** 2))
    shape = 1 / np.sqrt(np.maximum(np.fft.rfftfreq(n), 1e-3))
    pink = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) * shape, n)
    pink *= 10 ** (-40 / 20) / np.sqrt(np.mean(pink**2))
    return (v + pink).astype(np.float32)


def time_hops(sess: ort.InferenceSession, n: int = 5000) -> dict[str, float]:
    """Microseconds per ``session.run`` of one hop (median, mean, p99) over ``n`` calls."""
    rng = np.random.default_rng(0)
    spec = (rng.standard_normal((1, 161, 2)) * 0.01).astype(np.float32)
    state = np.zeros((1, state_size(sess)), np.float32)
    names = [o.name for o in sess.get_outputs()]
    si = names.index("state_out")
    for _ in range(300):
        state = sess.run(None, {"spec": spec, "state": state})[si]
    ts = np.zeros(n)
    for i in range(n):
        t = time.perf_counter()
        state = sess.run(None, {"spec": spec, "state": state})[si]
        ts[i] = time.perf_counter() - t
    return {"median_us": float(np.median(ts)) * 1e6, "mean_us": float(ts.mean()) * 1e6,
            "p99_us": float(np.percentile(ts, 99)) * 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("onnx", type=Path)
    ap.add_argument("--checkpoint", type=Path, required=True, help="the ONNX's checkpoint")
    ap.add_argument("--wav", type=Path, help="mono 16 kHz test input (default: a synthetic signal)")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--compare", type=Path, action="append", default=[], help="other ONNX models to time")
    args = ap.parse_args()
    torch.set_num_threads(1)

    sess = session(args.onnx)
    model, _ = load_checkpoint(args.checkpoint)
    names = {o.name for o in sess.get_outputs()}
    ok = {"enh", "state_out", "gain"} <= names and {i.name for i in sess.get_inputs()} == {"spec", "state"}
    if args.wav:
        x, sr = sf.read(args.wav, dtype="float32")
        assert sr == RATE and x.ndim == 1, (sr, x.shape)
    else:
        x = test_signal()
    y_stream, g_stream = stream_onnx(sess, x)
    y_off, g_off = offline_torch(model, x)
    err = float(np.abs(y_stream - y_off).max())
    g_err = float(np.abs(g_stream - g_off[: len(g_stream)]).max())
    y_again, _ = stream_onnx(sess, x)
    reset_err = float(np.abs(y_again - y_stream).max())
    print(f"(a) {x.size / RATE:.2f} s: max |onnx streaming - torch offline| = {err:.2e} "
          f"(peak {np.abs(y_off).max():.3f}), gain {g_err:.2e}; zero state again: {reset_err:.1e}")
    ok &= err <= args.tol and g_err <= args.tol and reset_err == 0.0
    z, _ = stream_onnx(sess, np.zeros(2 * RATE, np.float32))
    print(f"(b) silence in: max |out| = {np.abs(z).max():.1e}")
    ok &= float(np.abs(z).max()) == 0.0
    meta = sess.get_modelmeta().custom_metadata_map
    for path, s in [(args.onnx, sess)] + [(p, session(p)) for p in args.compare]:
        tm = time_hops(s)
        print(f"(c) {path}: {tm['median_us']:.0f} us/hop median, {tm['mean_us']:.0f} mean, "
              f"{tm['p99_us']:.0f} p99"
              f" (RTF {tm['median_us'] / 1e4:.4f})")  # fmt: skip
    macs = int(meta.get("voxd.macs_per_frame", 0)) * 100 / 1e6
    print(f"    {meta.get('voxd.params')} parameters, {macs:.1f} M MAC/s, "
          f"state {meta.get('voxd.state_size')} "
          f"floats, file {args.onnx.stat().st_size / 1e6:.2f} MB")  # fmt: skip
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
