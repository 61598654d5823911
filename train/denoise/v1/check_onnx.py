"""Check an exported streaming denoiser: streaming == offline, cost per frame, and a few quality scores.

(a) Runs the ONNX model hop by hop with onnxruntime (one thread) on a noisy file through voxd's own
    ``StftAnalysis`` / ``StftSynthesis`` and compares the output with whole-utterance torch inference of
    the checkpoint it was exported from (same STFT conventions); the maximum absolute difference of the
    output samples must be below ``--tol`` (1e-4). Also checks that a zero state restores the initial
    output (the runtime ``reset``).
(b) Times ``session.run`` per frame (one intra-op and one inter-op thread, sequential execution).
(c) Enhances ``--items`` items of an evaluation set (e.g. ``../shared/bench/dev/mono``; evaluation only,
    never training) and scores noisy and enhanced against clean with PESQ-WB, STOI and SI-SDR in the
    benchmark's scoring venv (``--score-python``, default ``/tmp/bench-venv/bin/python``).

Usage::

    V=/work/voxd-train/venv/bin/python
    $V train/denoise/v1/check_onnx.py /work/voxd-train/export/denoise.onnx \
        --checkpoint /work/voxd-train/runs/r1/best.pt --set ../shared/bench/dev/mono --items 8
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import soundfile as sf
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[2]))  # the repository root, for voxd.stft
from dn_model import HOP, N_FFT, stft  # noqa: E402
from export_onnx import load_checkpoint  # noqa: E402

from voxd.stft import StftAnalysis, StftSynthesis  # noqa: E402

SCORER = r"""
import json, sys
import numpy as np, soundfile as sf
from pesq import pesq
from pystoi import stoi
def sisdr(e, r):
    a = np.dot(e, r) / (np.dot(r, r) + 1e-12); p = a * r
    return 10 * np.log10(np.sum(p ** 2) / (np.sum((e - p) ** 2) + 1e-12) + 1e-12)
out = []
for clean, noisy, enh in json.load(sys.stdin):
    r, _ = sf.read(clean, dtype="float64"); res = {"item": clean}
    for name, path in (("noisy", noisy), ("enh", enh)):
        x, _ = sf.read(path, dtype="float64"); n = min(len(x), len(r))
        res[name] = {"pesq": pesq(16000, r[:n], x[:n], "wb"), "stoi": stoi(r[:n], x[:n], 16000),
                     "sisdr": sisdr(x[:n], r[:n])}
    out.append(res)
print(json.dumps(out))
"""


def session(path: Path) -> ort.InferenceSession:
    """onnxruntime session as a voxd stage would open it: CPU, one thread, sequential."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def state_size(sess: ort.InferenceSession) -> int:
    """The ``voxd.state_size`` metadata of the model."""
    return int(sess.get_modelmeta().custom_metadata_map["voxd.state_size"])


def stream_onnx(sess: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    """Enhance mono ``x`` (n,) hop by hop through voxd's STFT; output (n,) with the 10 ms delay removed."""
    an, syn = StftAnalysis(1, N_FFT, HOP), StftSynthesis(1, N_FFT, HOP)
    state = np.zeros((1, state_size(sess)), np.float32)
    pad = np.concatenate([x, np.zeros(HOP, np.float32)])  # flush the delay
    out = []
    for a in range(0, pad.size - pad.size % HOP, HOP):
        for spec in an.push(pad[None, a : a + HOP]):
            inp = np.stack([spec.real, spec.imag], axis=-1).astype(np.float32)  # (1, 161, 2)
            enh, state = sess.run(None, {"spec": inp, "state": state})
            out.append(syn.push((enh[..., 0] + 1j * enh[..., 1]).astype(np.complex64)))
    y = np.concatenate(out, axis=1)[0]
    return y[syn.delay_samples : syn.delay_samples + x.size]


def offline_torch(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """Whole-utterance torch inference of ``x`` (n,), synthesised with voxd's ``StftSynthesis``."""
    n = x.size
    pad = np.concatenate([x, np.zeros(HOP + (-n) % HOP, np.float32)])
    with torch.no_grad():
        spec = torch.view_as_real(stft(torch.from_numpy(pad)[None])).contiguous()
        y, _ = model(spec, model.initial_state(1))
    yc = (y[0, ..., 0] + 1j * y[0, ..., 1]).numpy().astype(np.complex64)
    syn = StftSynthesis(1, N_FFT, HOP)
    out = np.concatenate([syn.push(f[None]) for f in yc], axis=1)[0]
    return out[syn.delay_samples : syn.delay_samples + n]


def time_frames(sess: ort.InferenceSession, n: int = 3000) -> dict[str, float]:
    """Microseconds per ``session.run`` of one frame (mean, median, p99) over ``n`` calls."""
    rng = np.random.default_rng(0)
    spec = (rng.standard_normal((1, 161, 2)) * 0.1).astype(np.float32)
    state = np.zeros((1, state_size(sess)), np.float32)
    for _ in range(200):
        _, state = sess.run(None, {"spec": spec, "state": state})
    ts = np.zeros(n)
    for i in range(n):
        t = time.perf_counter()
        _, state = sess.run(None, {"spec": spec, "state": state})
        ts[i] = time.perf_counter() - t
    return {
        "mean_us": ts.mean() * 1e6,
        "median_us": float(np.median(ts)) * 1e6,
        "p99_us": np.percentile(ts, 99) * 1e6,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("onnx", type=Path)
    ap.add_argument(
        "--checkpoint", type=Path, required=True, help="the checkpoint the model was exported from"
    )
    ap.add_argument("--set", type=Path, default=HERE.parents[3] / "shared/bench/dev/mono")
    ap.add_argument("--items", type=int, default=8, help="evaluation items to enhance and score")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--score-python", default="/tmp/bench-venv/bin/python")
    ap.add_argument("--out", type=Path, help="write enhanced items here (default: a temporary dir)")
    args = ap.parse_args()
    torch.set_num_threads(1)

    sess = session(args.onnx)
    model, _ = load_checkpoint(args.checkpoint)
    meta = (
        json.loads(Path(args.set / "manifest.json").read_text())
        if (args.set / "manifest.json").exists()
        else {}
    )
    items = [json.loads(line) for line in (args.set / "meta.jsonl").read_text().splitlines() if line.strip()]
    items = items[: args.items]
    ok = True

    # (a) streaming == offline, and reset
    x, sr = sf.read(args.set / items[0]["noisy"], dtype="float32")
    assert sr == 16000 and x.ndim == 1, (sr, x.shape)
    y_stream = stream_onnx(sess, x)
    y_off = offline_torch(model, x)
    err = float(np.abs(y_stream - y_off).max())
    y_again = stream_onnx(sess, x)
    reset_err = float(np.abs(y_again - y_stream).max())
    print(f"(a) {items[0]['id']}: {x.size / sr:.2f} s; max |onnx streaming - torch offline| = {err:.2e} "
          f"(peak {np.abs(y_off).max():.3f}); zero state again: max diff {reset_err:.1e}")  # fmt: skip
    ok &= err < args.tol and reset_err == 0.0

    # (b) cost
    tm = time_frames(sess)
    macs = int(sess.get_modelmeta().custom_metadata_map.get("voxd.macs_per_frame", "0"))
    print(f"(b) onnxruntime 1 thread: {tm['mean_us']:.0f} us/frame mean, {tm['median_us']:.0f} median, "
          f"{tm['p99_us']:.0f} p99 (budget 500 us); RTF {tm['mean_us'] / 10000:.4f}; "
          f"{macs * 100 / 1e6:.1f} M MAC/s; file {args.onnx.stat().st_size / 1e6:.2f} MB")  # fmt: skip
    ok &= tm["mean_us"] < 500

    # (c) quality on a few evaluation items
    with tempfile.TemporaryDirectory() as tmp:
        outdir = args.out or Path(tmp)
        outdir.mkdir(parents=True, exist_ok=True)
        jobs = []
        for it in items:
            xi, _ = sf.read(args.set / it["noisy"], dtype="float32")
            yi = stream_onnx(sess, xi)
            p = outdir / f"{it['id']}.wav"
            sf.write(p, yi, 16000, subtype="FLOAT")
            jobs.append([str(args.set / it["clean"]), str(args.set / it["noisy"]), str(p)])
        r = subprocess.run([args.score_python, "-c", SCORER], input=json.dumps(jobs), capture_output=True,
                           text=True, check=True)  # fmt: skip
        scores = json.loads(r.stdout)
    print(
        f"(c) {len(items)} items of {args.set}{' (' + meta.get('name', '') + ')' if meta.get('name') else ''}"
    )
    print(f"    {'item':8s} {'kind':10s} {'snr':>4s}  {'PESQ':>11s} {'STOI':>13s} {'SI-SDR':>13s}")
    for it, s in zip(items, scores, strict=True):
        n, e = s["noisy"], s["enh"]
        print(f"    {it['id']:8s} {it.get('noise_kind', '')!s:10s} {it.get('snr_db', '')!s:>4s}  "
              f"{n['pesq']:.2f}->{e['pesq']:.2f} {n['stoi']:.3f}->{e['stoi']:.3f} "
              f"{n['sisdr']:5.1f}->{e['sisdr']:5.1f}")  # fmt: skip
    mean = {k: (np.mean([s["noisy"][k] for s in scores]), np.mean([s["enh"][k] for s in scores]))
            for k in ("pesq", "stoi", "sisdr")}  # fmt: skip
    print("    mean     " + "  ".join(f"{k} {a:.3f}->{b:.3f} ({b - a:+.3f})" for k, (a, b) in mean.items()))
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
