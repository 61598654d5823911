"""Export an array mask checkpoint to the ``mask`` stage's streaming ONNX model and check it.

    V=/work/voxd-train/venv/bin/python
    $V train/mask/export.py /work/voxd-train/mask-best-m4/best.pt plugins/voxd_array/models/mask-4mic.onnx

The graph is the denoiser's streaming step (``train/denoise/export_onnx.py``) with ``spec`` of shape
(1, 161, 2 M): mic 0's spectrum, then every other mic's relative to it. The check runs the ONNX model
hop by hop through ``voxd_array.mask.Mask`` (the stage's own code, on voxd's STFT) on array recordings
(``--set``: a dev/array-style directory; only a numerical check, nothing is tuned on it) and compares
its ``mask.gain`` with the whole-sequence torch model's gain: the largest difference must stay under 1e-4.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(HERE), str(HERE.parent / "denoise"), str(ROOT), str(ROOT / "plugins")]
from export_onnx import export_model, load_checkpoint  # noqa: E402
from voxd_array.mask import Mask, MaskParams  # noqa: E402

from voxd.frame import AudioFormat, Domain, Frame  # noqa: E402
from voxd.side import MASK_GAIN  # noqa: E402
from voxd.stage import StageContext  # noqa: E402
from voxd.stft import StftAnalysis  # noqa: E402

RATE, N_FFT, HOP = 16000, 320, 160
# this folder's train.py by its path: "train" on sys.path is the denoiser's (export_onnx puts it first)
_spec = importlib.util.spec_from_file_location("mask_train", HERE / "train.py")
assert _spec is not None and _spec.loader is not None
mask_train = importlib.util.module_from_spec(_spec)
sys.modules["mask_train"] = mask_train
_spec.loader.exec_module(mask_train)
model_input = mask_train.model_input


def stage_gains(onnx_path: Path, x: np.ndarray) -> np.ndarray:
    """``mask.gain`` ``(T, 161)`` of the stage running ``onnx_path`` hop by hop on ``x`` ``(M, n)``."""
    m = x.shape[0]
    stage = Mask(MaskParams(model=str(onnx_path)), "mask")
    stage.accept(AudioFormat(RATE, m, HOP, Domain.SPECTRAL, N_FFT))
    stage.open(StageContext(rate=RATE))
    an = StftAnalysis(m, N_FFT, HOP)
    out = []
    for t, a in enumerate(range(0, x.shape[1] // HOP * HOP, HOP)):
        (spec,) = an.push(np.ascontiguousarray(x[:, a : a + HOP], np.float32))
        out.append(stage.process(Frame(None, t, a, 0.0, RATE, spec=spec)).side[MASK_GAIN][0])
    return np.stack(out)


def check(model: torch.nn.Module, onnx_path: Path, items: list[np.ndarray]) -> float:
    """Largest |stage gain - torch gain| over ``items`` (each ``(M, n)`` float)."""
    worst = 0.0
    for x in items:
        with torch.no_grad():
            _, g, _ = model(model_input(torch.from_numpy(x.astype(np.float32))[None]),  # type: ignore[operator]
                            model.initial_state(1))  # type: ignore[operator]
        ref = g[0].numpy()
        got = stage_gains(onnx_path, x)
        n = min(len(ref), len(got))
        worst = max(worst, float(np.abs(got[:n] - ref[:n]).max()))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--set", type=Path, default=Path("/work/voxd-train/arrayset"))
    ap.add_argument("--items", type=int, default=3)
    args = ap.parse_args()
    model, ck = load_checkpoint(args.checkpoint)
    mics = model.cfg.aux + 1
    meta = {"voxd.model": f"voxd-array-mask-{mics}mic-1", "voxd.train_step": str(ck.get("step", "")),
            "voxd.mics": str(mics),
            "voxd.inputs": "spec: mic 0, then X_m conj(X_0) / |X_0| for m = 1..M-1 (re, im each)",
            "voxd.validation": json.dumps({k: round(float(v), 3) for k, v in ck.items()
                                           if k.endswith("_db")})}  # fmt: skip
    path = export_model(model, args.out, meta)
    items = []
    for line in (args.set / "meta.jsonl").read_text().splitlines():
        it = json.loads(line)
        if len(it["mic_positions"]) == mics and len(items) < args.items:
            items.append(sf.read(args.set / it["noisy"], dtype="float64", always_2d=True)[0].T)
    worst = check(model, path, items)
    print(f"{path}: {path.stat().st_size / 1e3:.0f} kB, {mics} mics, state {model.state_size} floats, "
          f"stage hop by hop vs torch: max |gain diff| {worst:.2e} over {len(items)} items")
    if worst > 1e-4:
        raise SystemExit("the exported model does not match the checkpoint")


if __name__ == "__main__":
    main()
