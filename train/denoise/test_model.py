"""Tests of the v2 denoiser's model and streaming export (training venv: torch, onnx, onnxruntime).

    /work/voxd-train/venv/bin/python train/denoise/test_model.py      # or: python -m pytest train/denoise

Not part of ``make test`` (the runtime venv has no torch). Each test builds a randomly perturbed model
(batch-norm statistics and weights moved off their initial values, so that folding and tap ordering are
really exercised) and checks that hop-by-hop inference equals whole-sequence inference within 1e-4.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from export_onnx import StreamStep, export_model  # noqa: E402
from model import Denoiser, ModelConfig, count_params, stft  # noqa: E402

TOL = 1e-4


def _model(seed: int = 0) -> tuple[Denoiser, torch.Tensor]:
    """A perturbed eval-mode model and the spectra (1, T, 161, 2) of a 2 s random test signal."""
    torch.manual_seed(seed)
    m = Denoiser(ModelConfig()).train()
    x = torch.randn(4, 32000) * 0.05
    with torch.no_grad():
        for _ in range(3):  # move the batch-norm statistics
            m.enhance(x)
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    m.eval()
    return m, torch.view_as_real(stft(x[:1])).contiguous()


def test_budget() -> None:
    """<= 150 k parameters."""
    assert count_params(Denoiser(ModelConfig())) <= 150_000


def test_streaming_equals_whole_sequence() -> None:
    """T = 1 calls threading the state == one call over all frames (outputs, gains, final state)."""
    m, spec = _model()
    with torch.no_grad():
        y, g, s = m(spec, m.initial_state(1))
        st, ys, gs = m.initial_state(1), [], []
        for t in range(spec.shape[1]):
            yt, gt, st = m(spec[:, t : t + 1], st)
            ys.append(yt)
            gs.append(gt)
    assert float((torch.cat(ys, 1) - y).abs().max()) <= TOL
    assert float((torch.cat(gs, 1) - g).abs().max()) <= TOL
    assert float((st - s).abs().max()) <= TOL


def test_stream_step_equals_model() -> None:
    """The export graph (:class:`StreamStep`) equals the training model hop by hop."""
    m, spec = _model(1)
    step = StreamStep(m).eval()
    with torch.no_grad():
        y, g, s = m(spec, m.initial_state(1))
        st, ys, gs = m.initial_state(1), [], []
        for t in range(spec.shape[1]):
            e, st, gg = step(spec[:, t], st)
            ys.append(e)
            gs.append(gg)
    assert float((torch.stack(ys, 1) - y).abs().max()) <= TOL
    assert float((torch.stack(gs, 1) - g).abs().max()) <= TOL
    assert float((st - s).abs().max()) <= TOL


def test_onnx_streaming_equals_whole_sequence() -> None:
    """onnxruntime, one hop per call, == whole-sequence torch; silence in gives silence out."""
    import onnxruntime as ort

    m, spec = _model(2)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_model(m, Path(tmp) / "m.onnx")
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [o.name for o in sess.get_outputs()] == ["enh", "state_out", "gain"]
        with torch.no_grad():
            y, g, _ = m(spec, m.initial_state(1))
        st = np.zeros((1, m.state_size), np.float32)
        ys, gs = [], []
        for t in range(spec.shape[1]):
            e, st, gg = sess.run(None, {"spec": spec[:, t].numpy(), "state": st})
            ys.append(e)
            gs.append(gg)
        assert float(np.abs(np.stack(ys, 1) - y.numpy()).max()) <= TOL
        assert float(np.abs(np.stack(gs, 1) - g.numpy()).max()) <= TOL
        st = np.zeros((1, m.state_size), np.float32)
        for _ in range(50):
            e, st, gg = sess.run(None, {"spec": np.zeros((1, 161, 2), np.float32), "state": st})
            assert not e.any() and not gg.any()


if __name__ == "__main__":
    for name, fn in list(globals().items()):
        if name.startswith("test_") and callable(fn):
            fn()
            print(f"{name}: ok")
