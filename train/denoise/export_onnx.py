"""Export a v2 denoiser checkpoint to a streaming ONNX model: one 10 ms hop per call (opset 17).

Interface (all float32, batch 1), as ``plugins/voxd_denoise/inhouse.py`` runs it:

===========  ============  ===========================================================================
name         shape         meaning
===========  ============  ===========================================================================
spec (in)    (1, 161, 2A)  the hop's noisy spectrum from voxd's shared STFT (real, imaginary), then
                           ``aux`` auxiliary spectra (``A = 1 + aux``; the echo suppressor's echo
                           estimate and reference): seen, not enhanced
state (in)   (1, S)        zeros at stream start and after a reset
enh (out)    (1, 161, 2)   enhanced spectrum for the shared synthesis
state_out    (1, S)        the next call's ``state``
gain (out)   (1, 161)      per-bin magnitude gain the model applied, ``|enh| / |spec|`` clipped to [0, 1]
===========  ============  ===========================================================================

``S`` is in the metadata as ``voxd.state_size``, with the STFT settings, the model configuration,
parameters, MACs and the training step. The graph is not a trace of :class:`model.Denoiser` but
:class:`StreamStep`, the same computation rewritten for one frame with as few operators as possible
(onnxruntime's cost per hop is mostly per-operator overhead): the fixed subband-feature-extraction conv is
folded into the first conv, batch norms into their convs, the deep-filter taps are reordered so that no
gather is needed. ``check_onnx.py`` verifies it against the whole-sequence torch model.

Usage::

    V=/work/voxd-train/venv/bin/python
    $V train/denoise/export_onnx.py train/denoise/checkpoint.pt /work/voxd-train/export/denoise.onnx
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as fn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model import HOP, N_BINS, N_FFT, RATE, Denoiser, ModelConfig, count_macs_per_frame, count_params

OPSET = 17


def fold_bn(weight: Tensor, bias: Tensor | None, bn: nn.BatchNorm2d,
            out_axis: int = 0) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Conv weight/bias with an eval-mode BatchNorm folded in (``out_axis``: output-channel axis)."""
    s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shape = [1] * weight.dim()
    shape[out_axis] = -1
    w = weight * s.reshape(shape)
    b0 = bias if bias is not None else torch.zeros_like(bn.running_mean)
    return w, (b0 - bn.running_mean) * s + bn.bias


class StreamStep(nn.Module):
    """One hop of :class:`model.Denoiser` (eval mode) with the flat state as input and output."""

    def __init__(self, model: Denoiser) -> None:
        super().__init__()
        model = model.eval()
        cfg = model.cfg
        self.cfg = cfg
        self.shapes = model.state_shapes()
        self.sizes = [int(torch.tensor(s).prod()) for _, s in self.shapes]
        c, u, o = cfg.channels, cfg.units, cfg.df_order
        self.u4 = u // 4
        with torch.no_grad():
            self.register_buffer("band_an_t", model.band_an.t().contiguous())  # (U, 161)
            self.register_buffer("band_syn", model.band_syn.clone())  # (U, 161)
            # enc1 o SFE = one 7-tap stride-2 conv on the 3 feature channels (zero padding 3)
            n_feat = 3 * (1 + cfg.aux)  # |X|^c, Re, Im per input spectrum
            w1 = model.enc1[0].weight[:, :, 0]  # (C, 3 n_feat, 5): input channel ch*3 + k
            w7 = torch.zeros(c, n_feat, 7)
            for ch in range(n_feat):
                for k in range(3):
                    w7[:, ch, k : k + 5] += w1[:, ch * 3 + k]
            w, b = fold_bn(w7, model.enc1[0].bias, model.enc1[1])
            self.enc1_w, self.enc1_b = nn.Parameter(w), nn.Parameter(b)
            w, b = fold_bn(model.enc2[0].weight[:, :, 0], model.enc2[0].bias, model.enc2[1])
            self.enc2_w, self.enc2_b = nn.Parameter(w), nn.Parameter(b)
            self.tb = []
            for i, blk in enumerate(model.enc_t):
                dw = blk.dw.weight  # (C, 1, 3, 3)
                pw, pb = fold_bn(blk.pw.weight, None, blk.bn)
                self.register_parameter(f"tb{i}_dw", nn.Parameter(dw.clone()))
                self.register_parameter(f"tb{i}_pw", nn.Parameter(pw.clone()))
                self.register_parameter(f"tb{i}_pb", nn.Parameter(pb.clone()))
                self.tb.append((blk.dw.dilation[0], blk.hist))
            self.blocks = model.dp  # LayerNorm and Linear modules export as single ops
            # the GRUs again, sequence-first (a batch_first GRU would add transposes around the op)
            self.grus = nn.ModuleList()
            for blk in model.dp:
                g = nn.GRU(c, c)
                g.load_state_dict(blk.gru.state_dict())
                self.grus.append(g)
            # transposed conv, 2 groups: weight (C_in, C_out / 2, 4); weight[i, j] feeds output channel
            # (i // (C_in / 2)) * (C_out / 2) + j
            tw, bn = model.dec2[0].weight[:, :, 0], model.dec2[1]
            sc = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            half_in, half_out = tw.shape[0] // 2, tw.shape[1]
            idx = (torch.arange(tw.shape[0])[:, None] // half_in) * half_out + torch.arange(half_out)[None]
            self.dec2_w = nn.Parameter(tw * sc[idx].unsqueeze(-1))
            self.dec2_b = nn.Parameter((model.dec2[0].bias - bn.running_mean) * sc + bn.bias)
            # dec1 output channels reordered: gain, then the taps oldest first (matches the history)
            perm = [0] + [1 + 2 * i + r for i in reversed(range(o)) for r in (0, 1)]
            self.dec1_w = nn.Parameter(model.dec1.weight[:, perm, 0].clone())  # (C, 1 + 2o, 4)
            self.dec1_b = nn.Parameter(model.dec1.bias[perm].clone())
            ident = torch.zeros(o, 1)
            ident[o - 1] = 1.0  # the current frame is last
            self.register_buffer("df_ident", ident)
        self.slope = 0.1  # LeakyReLU
        self.dilations = [d for d, _ in self.tb]

    def forward(self, spec: Tensor, state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """spec (1, 161, 2 + 2 aux), state (1, S) -> enh (1, 161, 2), state_out (1, S), gain (1, 161)."""
        cfg = self.cfg
        c, u4, lb, o = cfg.channels, self.u4, cfg.lin_bins, cfg.df_order
        parts = torch.split(state, self.sizes, dim=1)
        st = {n: p.reshape(s) for (n, s), p in zip(self.shapes, parts, strict=True)}

        feats = []
        for k in range(1 + cfg.aux):  # the spectrum to enhance, then the auxiliary ones
            xk = spec[0, :, 2 * k : 2 * k + 2]  # (161, 2)
            pk = (xk * xk).sum(1, keepdim=True)  # (161, 1)
            mag = torch.sqrt(pk + 1e-12)
            feats.append(torch.cat([mag, xk], dim=1) * torch.pow(mag, cfg.compress - 1.0))  # (161, 3)
        x = spec[0, :, :2]  # (161, 2)
        pw = (x * x).sum(1, keepdim=True)  # (161, 1)
        feat = feats[0] if len(feats) == 1 else torch.cat(feats, dim=1)  # (161, 3 (1 + aux))
        bands = (self.band_an_t @ feat).t().unsqueeze(0)  # (1, 3 (1 + aux), U)
        e1 = fn.leaky_relu(fn.conv1d(bands, self.enc1_w, self.enc1_b, stride=2, padding=3), self.slope)
        e2 = fn.leaky_relu(fn.conv1d(e1, self.enc2_w, self.enc2_b, stride=2, padding=2, groups=2),
                           self.slope)  # (1, C, U/4)  # fmt: skip
        y = e2.unsqueeze(2)  # (1, C, 1, U/4)
        new: dict[str, Tensor] = {}
        for i, d in enumerate(self.dilations):
            xx = torch.cat([st[f"enc_t{i}"].unsqueeze(0), y], dim=2)  # (1, C, h + 1, U/4)
            z = fn.conv2d(xx, getattr(self, f"tb{i}_dw"), padding=(0, 1), dilation=(d, 1), groups=c)
            z = fn.conv2d(z, getattr(self, f"tb{i}_pw"), getattr(self, f"tb{i}_pb"))
            z = fn.leaky_relu(z, self.slope)
            y = y + z
            new[f"enc_t{i}"] = xx[:, :, 1:]  # (1, C, h, U/4)
        z = y.reshape(c, u4).t()  # (U/4, C)
        for i, blk in enumerate(self.blocks):
            a = blk.fmix @ blk.ln_f(z) + blk.fmix_b
            z = z + blk.cmix(fn.leaky_relu(a, self.slope))
            # sequence length 1, the units as the batch: (1, U/4, C) in, (1, 1, U/4, C) out in ONNX
            g, h_new = self.grus[i](z.unsqueeze(0), st[f"dp{i}"].unsqueeze(0))
            z = z + blk.ln_t(blk.fc(g.reshape(u4, c)))
            new[f"dp{i}"] = h_new  # (1, U/4, C)
        y = z.t().unsqueeze(0)  # (1, C, U/4)
        d2 = fn.conv_transpose1d(y + e2, self.dec2_w, self.dec2_b, stride=2, padding=1, groups=2)
        d2 = fn.leaky_relu(d2, self.slope)
        out = fn.conv_transpose1d(d2 + e1, self.dec1_w, self.dec1_b, stride=2, padding=1)[0]  # (1 + 2o, U)

        gain_u = torch.sigmoid(out[:1])  # (1, U)
        gain = gain_u @ self.band_syn  # (1, 161)
        masked = x * gain.t()  # (161, 2)
        coef = torch.tanh(out[1:, :lb]).reshape(o, 2, lb)  # taps oldest first
        past = torch.cat([st["df"], masked[:lb].t().unsqueeze(0)], dim=0)  # (o, 2, lb)
        c_re = coef[:, 0] + self.df_ident
        c_im = coef[:, 1]
        y_re = (c_re * past[:, 0] - c_im * past[:, 1]).sum(0, keepdim=True)  # (1, lb)
        y_im = (c_re * past[:, 1] + c_im * past[:, 0]).sum(0, keepdim=True)
        low = torch.cat([y_re, y_im], dim=0).t()  # (lb, 2)
        enh = torch.cat([low, masked[lb:]], dim=0)  # (161, 2)
        new["df"] = past[1:]
        e_abs = torch.sqrt((enh * enh).sum(1))  # (161,)
        applied = torch.clamp(e_abs / (torch.sqrt(pw[:, 0]) + 1e-9), 0.0, 1.0).unsqueeze(0)
        state_out = torch.cat([new[n].reshape(1, -1) for n, _ in self.shapes], dim=1)
        return enh.unsqueeze(0), state_out, applied


def load_checkpoint(path: Path) -> tuple[Denoiser, dict[str, object]]:
    """The model of a checkpoint (eval mode) and the checkpoint's other fields."""
    ck = torch.load(path, map_location="cpu", weights_only=False)
    model = Denoiser(ModelConfig(**ck["cfg"]))
    model.load_state_dict(ck["model"])
    model.eval()
    return model, ck


def export_model(model: Denoiser, out: Path, extra_meta: dict[str, str] | None = None) -> Path:
    """Write the streaming ONNX model of ``model`` to ``out`` (atomically); return ``out``."""
    import onnx

    step = StreamStep(model).eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.onnx")
    with torch.no_grad():
        spec = torch.zeros(1, N_BINS, 2 * (1 + model.cfg.aux))
        torch.onnx.export(step, (spec, model.initial_state(1)), str(tmp),
                          input_names=["spec", "state"], output_names=["enh", "state_out", "gain"],
                          opset_version=OPSET, dynamo=False, do_constant_folding=True)  # fmt: skip
    m = onnx.load(str(tmp))
    meta = {
        "voxd.model": "voxd-denoise-v2",
        "voxd.rate": str(RATE),
        "voxd.n_fft": str(N_FFT),
        "voxd.hop": str(HOP),
        "voxd.window": "sqrt-hann (periodic)",
        "voxd.state_size": str(model.state_size),
        "voxd.outputs": "enh, state_out, gain (|enh|/|spec| clipped to [0, 1])",
        "voxd.config": json.dumps(model.cfg.to_dict()),
        "voxd.params": str(count_params(model)),
        "voxd.macs_per_frame": str(count_macs_per_frame(model)),
        **(extra_meta or {}),
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
    ap.add_argument("checkpoint", type=Path, help="checkpoint.pt (training) or a best-*.pt export")
    ap.add_argument("out", type=Path)
    args = ap.parse_args()
    model, ck = load_checkpoint(args.checkpoint)
    extra = {"voxd.train_step": str(ck.get("step", "")), "voxd.audio_hours": str(ck.get("audio_hours", ""))}
    path = export_model(model, args.out, extra)
    print(f"{path}: {path.stat().st_size / 1e6:.2f} MB, state {model.state_size} floats")


if __name__ == "__main__":
    main()
