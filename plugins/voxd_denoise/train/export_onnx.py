"""Export a trained denoiser checkpoint to a streaming ONNX model: one 10 ms frame per call.

Interface (all float32; batch 1):

===========  =================  ===================================================================
name         shape              meaning
===========  =================  ===================================================================
``spec``     (1, 161, 2)        noisy spectrum of one hop from voxd's shared STFT (real, imaginary)
``state``    (1, S)             recurrent/history state; zeros at stream start and after a reset
``enh``      (1, 161, 2)        enhanced spectrum of the same hop, for the shared STFT synthesis
``state_out`` (1, S)            state to pass to the next call
===========  =================  ===================================================================

``S`` and the model's settings are in the ONNX metadata (``voxd.state_size``, ``voxd.config`` ...),
so a stage can allocate the state without knowing the architecture. The model adds no latency: the
output spectrum depends on this hop and earlier ones only.

Usage::

    /work/voxd-train/venv/bin/python plugins/voxd_denoise/train/export_onnx.py \
        /work/voxd-train/runs/r1/best.pt /work/voxd-train/export/denoise.onnx
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dn_model import HOP, N_BINS, N_FFT, RATE, Denoiser, ModelConfig, count_macs_per_frame

OPSET = 17


class StreamStep(nn.Module):
    """One hop of :class:`Denoiser`: (spec (1, 161, 2), state (1, S)) -> (enh (1, 161, 2), state (1, S))."""

    def __init__(self, model: Denoiser) -> None:
        super().__init__()
        self.model = model

    def forward(self, spec: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """See the class docstring."""
        y, new_state = self.model(spec.unsqueeze(1), state)
        return y[:, 0], new_state


def load_checkpoint(path: Path) -> tuple[Denoiser, dict[str, object]]:
    """The model of a checkpoint (eval mode) and the checkpoint's other fields."""
    ck = torch.load(path, map_location="cpu", weights_only=False)
    model = Denoiser(ModelConfig(**ck["cfg"]))
    model.load_state_dict(ck["model"])
    model.eval()
    return model, ck


def export(ckpt: Path, out: Path) -> Path:
    """Write the ONNX model for ``ckpt`` to ``out`` (atomically); return ``out``."""
    import onnx

    model, ck = load_checkpoint(ckpt)
    step = StreamStep(model).eval()
    spec = torch.zeros(1, N_BINS, 2)
    state = model.initial_state(1)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.onnx")
    with torch.no_grad():
        torch.onnx.export(
            step,
            (spec, state),
            str(tmp),
            input_names=["spec", "state"],
            output_names=["enh", "state_out"],
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )
    m = onnx.load(str(tmp))
    meta = {
        "voxd.model": "voxd-denoise",
        "voxd.rate": str(RATE),
        "voxd.n_fft": str(N_FFT),
        "voxd.hop": str(HOP),
        "voxd.window": "sqrt-hann (periodic)",
        "voxd.state_size": str(model.state_size),
        "voxd.config": json.dumps(model.cfg.to_dict()),
        "voxd.params": str(sum(p.numel() for p in model.parameters())),
        "voxd.macs_per_frame": str(count_macs_per_frame(model)),
        "voxd.train_step": str(ck.get("step", "")),
    }
    for k, v in meta.items():
        p = m.metadata_props.add()
        p.key, p.value = k, v
    onnx.checker.check_model(m)
    onnx.save(m, str(tmp))
    tmp.replace(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("out", type=Path)
    args = ap.parse_args()
    path = export(args.checkpoint, args.out)
    print(f"{path}: {path.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
