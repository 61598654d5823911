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

    /work/voxd-train/venv/bin/python train/denoise/v1/export_onnx.py \
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


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> tuple[Tensor, Tensor]:
    """Weight and bias of ``conv`` followed by ``bn`` (eval mode) as one conv."""
    w = conv.weight.detach().clone()
    b = conv.bias.detach().clone() if conv.bias is not None else torch.zeros(w.shape[0])
    if bn is not None:
        scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
        w = w * scale.reshape(-1, *([1] * (w.dim() - 1)))
        b = (b - bn.running_mean) * scale + bn.bias.detach()
    return w, b


def _conv1d(w: Tensor, b: Tensor, stride: int = 1, pad: int = 1) -> nn.Conv1d:
    """A Conv1d with weight ``w`` (out, in, k) or (out, in, 1, k) and bias ``b``."""
    if w.dim() == 4:
        w = w.squeeze(2)
    c = nn.Conv1d(w.shape[1], w.shape[0], w.shape[2], stride=stride, padding=pad)
    c.weight.data.copy_(w)
    c.bias.data.copy_(b)
    return c


class StreamStep(nn.Module):
    """One hop of :class:`Denoiser`: (spec (1, 161, 2), state (1, S)) -> (enh (1, 161, 2), state (1, S)).

    The same computation as ``Denoiser.forward`` with ``T = 1``, rewritten for a small, fast graph:
    BatchNorm folded into the convs, the (time, frequency) convs as 1-D convs over frequency (the time
    taps become input channels), one channels-first layout, and the deep-filter taps ordered like the
    history. The state layout is this module's own (``Denoiser.state_size`` floats, zeros at start).
    """

    def __init__(self, model: Denoiser) -> None:
        super().__init__()
        cfg = model.cfg
        self.cfg, self.alpha, self.hist = cfg, model.alpha, model.hist
        c, nb, ndf, o = cfg.conv_ch, cfg.nb_bands, cfg.df_bins, cfg.df_order
        self.register_buffer("band_an", model.band_an.clone())
        self.register_buffer("band_syn", model.band_syn.clone())
        self.register_buffer("mu_init", model.mu_init.clone())
        self.register_buffer("s_init", model.s_init.clone())
        w, b = _fold(model.enc_b0, model.enc_b0_bn)  # (c, 1, hist+1, 3): time taps -> channels
        self.b0 = _conv1d(w.reshape(c, self.hist + 1, 3), b)
        w, b = _fold(model.enc_d0, model.enc_d0_bn)  # (c, 2, hist+1, 3): (re/im, time) -> channels
        self.d0 = _conv1d(w.reshape(c, 2 * (self.hist + 1), 3), b)
        blocks = (model.enc_b1, model.enc_b2, model.enc_d1, model.enc_d2, model.enc_d3)
        self.b1, self.b2, self.d1, self.d2, self.d3 = (
            _conv1d(*_fold(k.conv, k.bn), stride=2) for k in blocks
        )
        self.emb, self.gru, self.dec_lin, self.df_gru = model.emb, model.gru, model.dec_lin, model.df_gru

        def tconv(m: nn.ConvTranspose2d) -> nn.ConvTranspose1d:
            t = nn.ConvTranspose1d(c, c, 4, stride=2, padding=1)
            t.weight.data.copy_(m.weight.detach().squeeze(2))
            t.bias.data.copy_(m.bias.detach())
            return t

        self.dec_b2, self.dec_b1 = tconv(model.dec_b2), tconv(model.dec_b1)
        self.dec_b0 = _conv1d(*_fold(model.dec_b0, None))
        # deep filter: reorder the outputs from (tap, re/im) to (history slot, re/im), slot j = tap o-1-j
        perm = torch.tensor([(o - 1 - j) * 2 + r for j in range(o) for r in range(2)])
        rows = (perm[:, None] * ndf + torch.arange(ndf)[None, :]).reshape(-1)
        self.df_out = nn.Linear(cfg.hidden, 2 * o * ndf)
        self.df_out.weight.data.copy_(model.df_out.weight.detach()[rows])
        self.df_out.bias.data.copy_(model.df_out.bias.detach()[rows])
        w, b = _fold(model.df_skip, None)
        self.df_skip = _conv1d(w[perm], b[perm], pad=0)
        ident = torch.zeros(1, o, 1)
        ident[0, o - 1] = 1.0  # the current frame is the last history slot
        self.register_buffer("df_ident", ident)
        sizes = {
            "mu": nb, "s": ndf, "band_hist": self.hist * nb, "df_hist": 2 * self.hist * ndf,
            "gru": cfg.gru_layers * cfg.hidden, "df_gru": cfg.hidden, "spec_hist": (o - 1) * 2 * ndf,
        }  # fmt: skip
        self.slices: dict[str, tuple[int, int]] = {}
        pos = 0
        for k, n in sizes.items():
            self.slices[k] = (pos, pos + n)
            pos += n
        assert pos == model.state_size, (pos, model.state_size)

    def _part(self, state: Tensor, name: str, *shape: int) -> Tensor:
        a, b = self.slices[name]
        return state[:, a:b].reshape(1, *shape)

    def forward(self, spec: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """See the class docstring."""
        cfg = self.cfg
        nb, ndf, o, h, c = cfg.nb_bands, cfg.df_bins, cfg.df_order, cfg.hidden, cfg.conv_ch
        a = self.alpha
        x = spec.transpose(1, 2)  # (1, 2, F)
        power = (x * x).sum(1)  # (1, F)
        band_db = 10.0 * torch.log10(torch.clamp(power @ self.band_an, min=1e-10))  # (1, nb)
        mag_low = torch.sqrt(power[:, :ndf] + 1e-12)
        mu = a * (self._part(state, "mu", nb) + self.mu_init) + (1.0 - a) * band_db
        s = a * (self._part(state, "s", ndf) + self.s_init) + (1.0 - a) * mag_low
        f_band = ((band_db - mu) / 40.0).unsqueeze(1)  # (1, 1, nb)
        low = x[:, :, :ndf]  # (1, 2, ndf)
        f_df = (low / s.unsqueeze(1)).unsqueeze(2)  # (1, 2, 1, ndf)
        xb = torch.cat([self._part(state, "band_hist", self.hist, nb), f_band], dim=1)  # (1, hist+1, nb)
        xd = torch.cat([self._part(state, "df_hist", 2, self.hist, ndf), f_df], dim=2)  # (1, 2, hist+1, ndf)
        e0 = torch.relu(self.b0(xb))
        e1 = torch.relu(self.b1(e0))
        e2 = torch.relu(self.b2(e1))
        d0 = torch.relu(self.d0(xd.reshape(1, 2 * (self.hist + 1), ndf)))
        d3 = torch.relu(self.d3(torch.relu(self.d2(torch.relu(self.d1(d0))))))
        flat = torch.cat([e2.reshape(1, -1), d3.reshape(1, -1)], dim=1)
        emb = torch.relu(self.emb(flat)).unsqueeze(1)  # (1, 1, h)
        z, h_new = self.gru(emb, self._part(state, "gru", cfg.gru_layers, h).transpose(0, 1))
        u = self.dec_lin(z[:, 0]).reshape(1, c, -1)
        u = torch.relu(self.dec_b2(torch.relu(u + e2)))
        u = torch.relu(self.dec_b1(u + e1))
        gain = torch.sigmoid(self.dec_b0(u + e0))[:, 0] @ self.band_syn  # (1, F)
        masked = x * gain.unsqueeze(1)  # (1, 2, F)
        zd, hd_new = self.df_gru(z, self._part(state, "df_gru", 1, h).transpose(0, 1))
        coef = torch.tanh(self.df_out(zd[:, 0]).reshape(1, 2 * o, ndf) + self.df_skip(d0)).reshape(
            1, o, 2, ndf
        )
        past = torch.cat([self._part(state, "spec_hist", o - 1, 2, ndf), masked[:, None, :, :ndf]], dim=1)
        c_re, c_im = coef[:, :, 0] + self.df_ident, coef[:, :, 1]
        p_re, p_im = past[:, :, 0], past[:, :, 1]
        y_re = (c_re * p_re - c_im * p_im).sum(1, keepdim=True)  # (1, 1, ndf)
        y_im = (c_re * p_im + c_im * p_re).sum(1, keepdim=True)
        out = torch.cat([torch.cat([y_re, y_im], dim=1), masked[:, :, ndf:]], dim=2)  # (1, 2, F)
        new_state = torch.cat(
            [
                mu - self.mu_init,
                s - self.s_init,
                xb[:, 1:].reshape(1, -1),
                xd[:, :, 1:].reshape(1, -1),
                h_new.transpose(0, 1).reshape(1, -1),
                hd_new.transpose(0, 1).reshape(1, -1),
                past[:, 1:].reshape(1, -1),
            ],
            dim=1,
        )
        return out.transpose(1, 2), new_state


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
