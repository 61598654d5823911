"""A mask checkpoint through the real ``beamform`` stage on array sets: ΔSTOI / ΔSI-SDR vs the ref mic.

    V=/work/voxd-train/venv/bin/python
    $V train/mask/eval_bf.py /work/voxd-train/mask-best-m4/best.pt --set ../shared/bench/dev/array \
        --set /work/voxd-train/arrayset [--set-param rtf_s=2.0 ...]

For every item whose microphone count matches the checkpoint: the model's per-bin gain (whole item,
zero initial state: the same as hop by hop) is handed to voxd's ``beamform`` stage (``mask: denoise``,
the stage's own code, hop by hop on voxd's STFT) as the ``denoise.gain`` side value; the output is
scored against the item's ``clean`` reference with the shared scorer's metrics, beside the reference
mic. This is how a mask model is judged before it is exported: by what it does for the beamformer.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(HERE), str(HERE.parent / "denoise"), str(ROOT), str(ROOT / "plugins"),
                str(ROOT.parent / "shared" / "bench" / "tools")]
import metrics as M  # noqa: E402
from model import Denoiser, ModelConfig  # noqa: E402
from voxd_array.beamform import Beamformer, BeamformParams  # noqa: E402

from train import model_input  # noqa: E402
from voxd.frame import AudioFormat, Domain, Frame  # noqa: E402
from voxd.stage import StageContext  # noqa: E402
from voxd.stft import StftAnalysis, StftSynthesis  # noqa: E402

RATE, N_FFT, HOP = 16000, 320, 160
RT60 = [(0.0, 0.3, "rt60<0.3"), (0.3, 0.5, "0.3<=rt60<0.5"), (0.5, 9.9, "rt60>=0.5")]


def gains(model: Denoiser, x: np.ndarray) -> np.ndarray:
    """Per-hop gain ``(T, 161)`` of the model for the recording ``x`` ``(M, n)``."""
    with torch.no_grad():
        spec = model_input(torch.from_numpy(x.astype(np.float32))[None])
        _, g, _ = model(spec, model.initial_state(1))
    return g[0].numpy()


def oracle(x: np.ndarray, img: np.ndarray) -> np.ndarray:
    """Ideal ratio mask ``(T, 161)``: target-image power over target-image + rest power, mean over mics."""
    ps, pn = [], []
    for m in range(x.shape[0]):
        an_s, an_n = StftAnalysis(1, N_FFT, HOP), StftAnalysis(1, N_FFT, HOP)
        n = x.shape[1] // HOP * HOP
        s = np.stack(an_s.push(img[m : m + 1, :n].astype(np.float32)))[:, 0]
        r = np.stack(an_n.push((x[m : m + 1, :n] - img[m : m + 1, :n]).astype(np.float32)))[:, 0]
        ps.append(np.abs(s) ** 2)
        pn.append(np.abs(r) ** 2)
    p_s, p_n = np.mean(ps, axis=0), np.mean(pn, axis=0)
    return (p_s / (p_s + p_n + 1e-20)).astype(np.float32)


def beamform(x: np.ndarray, positions: list[list[float]], g: np.ndarray | None,
             params: dict[str, object]) -> np.ndarray:
    """The ``beamform`` stage on ``x`` ``(M, n)``; ``g`` ``(T, 161)`` the mask (None: VAD-free ref mic)."""
    m = x.shape[0]
    stage = Beamformer(BeamformParams(**params), "bf")  # type: ignore[arg-type]
    stage.accept(AudioFormat(RATE, m, HOP, Domain.SPECTRAL, N_FFT))
    stage.open(StageContext(rate=RATE, positions=np.asarray(positions, np.float64)))
    an, syn = StftAnalysis(m, N_FFT, HOP), StftSynthesis(1, N_FFT, HOP)
    n = x.shape[1] // HOP * HOP
    out = []
    for t, a in enumerate(range(0, n, HOP)):
        (spec,) = an.push(np.ascontiguousarray(x[:, a : a + HOP], np.float32))
        side = {} if g is None else {"denoise.gain": g[min(t, len(g) - 1)][None].astype(np.float32)}
        f = stage.process(Frame(None, t, a, 0.0, RATE, spec=spec, side=side))
        out.append(syn.push(f.spec))  # type: ignore[arg-type]
    y = np.concatenate(out, axis=1)[0]
    d = N_FFT - HOP  # the STFT pair's delay
    return np.concatenate([y[d:], np.zeros(x.shape[1] - n + d)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="a mask checkpoint, or 'oracle': the ideal ratio mask of the item's "
                                       "target image (image/, every mic) against the rest, mean over mics")
    ap.add_argument("--mics", type=int, default=4, help="with 'oracle': the items' microphone count")
    ap.add_argument("--set", action="append", type=Path, required=True)
    ap.add_argument("--set-param", action="append", default=[], help="beamform parameter KEY=VALUE")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    model: Denoiser | None = None
    mics = a.mics
    if a.checkpoint != "oracle":
        ck = torch.load(a.checkpoint, map_location="cpu", weights_only=False)
        model = Denoiser(ModelConfig(**ck["cfg"]))
        model.load_state_dict(ck["model"])
        model.eval()
        mics = model.cfg.aux + 1
    params: dict[str, object] = {"method": "mvdr", "steering": "rtf", "mask": "denoise", "rtf_s": 2.0}
    for kv in a.set_param:
        k, v = kv.split("=", 1)
        params[k] = json.loads(v)
    rows = []
    for d in a.set:
        for line in (d / "meta.jsonl").read_text().splitlines():
            it = json.loads(line)
            if len(it["mic_positions"]) != mics:
                continue
            x = sf.read(d / it["noisy"], dtype="float64", always_2d=True)[0].T
            ref = sf.read(d / it["clean"], dtype="float64")[0]
            if model is None:
                img = sf.read(d / it["image"], dtype="float64", always_2d=True)[0].T
                g = oracle(x, img)
            else:
                g = gains(model, x)
            y = beamform(x, it["mic_positions"], g, params)
            r0 = (M.stoi(ref, x[0]), M.si_sdr(ref, x[0]))
            r1 = (M.stoi(ref, y[: len(ref)]), M.si_sdr(ref, y[: len(ref)]))
            rows.append({"set": d.name, "id": it["id"], "geometry": it["geometry"],
                         "kind": it["interferer_kind"],
                         "rt60": next(lbl for lo, hi, lbl in RT60 if lo <= it["rt60_s"] < hi),
                         "dstoi": r1[0] - r0[0], "dsisdr": r1[1] - r0[1]})
    for key in ("set", "geometry", "rt60", "kind"):
        for grp in sorted({r[key] for r in rows}):
            sel = [r for r in rows if r[key] == grp]
            print(f"{grp:<22} n={len(sel):<3} dSTOI {np.mean([r['dstoi'] for r in sel]):+.3f}  "
                  f"dSI-SDR {np.mean([r['dsisdr'] for r in sel]):+.2f}")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
