"""Export a residual-echo suppressor checkpoint to the stage's streaming ONNX model and check it.

    V=/work/voxd-train/venv/bin/python
    $V train/echo/export.py /work/voxd-train/echo-best/best.pt plugins/voxd_aec/models/echo.onnx

The graph is the denoiser's streaming step (``train/denoise/export_onnx.py``) with ``spec`` of shape
(1, 161, 6): the linear output's, the echo estimate's and the aligned reference's spectra. The check runs
the ONNX model hop by hop through ``voxd_aec.residual.NeuralSuppressor`` (the stage's own code, with
voxd's STFT) on validation items and compares it with the whole-sequence torch model: the largest
difference must stay under 1e-4 of full scale.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(HERE.parent / "denoise"), str(ROOT)]
from export_onnx import export_model, load_checkpoint  # noqa: E402
from model import istft, stft  # noqa: E402


def check(model: torch.nn.Module, onnx_path: Path, val: np.ndarray) -> float:
    """Largest |ONNX hop by hop - torch whole item| over ``val`` items (int16 (items, 4, n)), full scale."""
    import importlib.util

    # the stage's module by its path: the plugin package's __init__ wants the daemon's dependencies
    spec_ = importlib.util.spec_from_file_location("residual", ROOT / "plugins" / "voxd_aec" / "residual.py")
    assert spec_ is not None and spec_.loader is not None
    residual = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(residual)
    HOP, NeuralSuppressor = residual.HOP, residual.NeuralSuppressor

    worst = 0.0
    for item in val:
        x = torch.from_numpy(item[:3].astype(np.float32) / 32767.0)
        spec = torch.cat([torch.view_as_real(stft(x[k : k + 1])) for k in range(3)], dim=-1)
        with torch.no_grad():
            y, _, _ = model(spec, model.initial_state(1))  # type: ignore[operator]
        ref = istft(torch.view_as_complex(y.contiguous()), x.shape[-1])[0].numpy()
        sup = NeuralSuppressor(str(onnx_path), 1)
        out = np.concatenate([sup.process(*(item[k : k + 1, a : a + HOP] for k in range(3)))
                              for a in range(0, item.shape[-1], HOP)], axis=1)[0]  # fmt: skip
        # the stage's output lags by one hop; the last hop of the torch signal is only half synthesised
        worst = max(worst, float(np.abs(out[HOP:] - ref[: -HOP])[: -HOP].max()))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--val", type=Path, default=Path("/work/voxd-train/echo/val.npy"))
    ap.add_argument("--items", type=int, default=4)
    args = ap.parse_args()
    model, ck = load_checkpoint(args.checkpoint)
    meta = {"voxd.model": "voxd-echo-suppressor-1", "voxd.train_step": str(ck.get("step", "")),
            "voxd.inputs": "spec: linear output, echo estimate, aligned reference (re, im each)",
            "voxd.validation": json.dumps({k: round(float(v), 3) for k, v in ck.items()
                                           if k.endswith("_db") or k == "score"})}  # fmt: skip
    path = export_model(model, args.out, meta)
    worst = check(model, path, np.load(args.val, mmap_mode="r")[: args.items])
    print(f"{path}: {path.stat().st_size / 1e3:.0f} kB, state {model.state_size} floats, "
          f"ONNX hop by hop vs torch: max |diff| {worst:.2e}")
    if worst > 1e-4:
        raise SystemExit("the exported model does not match the checkpoint")


if __name__ == "__main__":
    main()
