"""Train the learned residual-echo suppressor (issue 18), resumable from ONE checkpoint file.

The model is the v2 denoiser's network (``train/denoise/model.py``) with two auxiliary input spectra
(``aux = 2``): it enhances the linear echo canceller's output and also sees the canceller's echo
estimate and the aligned reference, per 10 ms hop, causally. It runs after SpeexDSP's linear filter in
the ``aec`` stage (``suppress: neural``) in place of SpeexDSP's suppressor. Pairs come from
``make_data.py`` (the shipped canceller run offline on training-allowed mixtures)::

    V=/work/voxd-train/venv/bin/python
    nohup nice -n 10 $V train/echo/train.py --data /work/voxd-train/echo > /work/voxd-train/echo/run.out &
    nohup nice -n 10 $V train/echo/train.py --data /work/voxd-train/echo --resume >> ... &

**Loss**: the denoiser's (compressed magnitude + compressed complex spectrum, normalised by the input's
compressed energy, plus 0.01 x SI-SNR), against the target = near end + the room noise 15 dB lower.

**Batches**: ``--batch`` random crops of ``--crop`` s from the items (a crop may start anywhere: the
canceller converging, converged, after a path change); batch ``k`` is a pure function of ``(seed, k)``.
AdamW, linear warm-up, cosine decay to 2 % at ``--total-steps``; gradient-norm clipping at 1.

**Validation** every ``--val-every`` steps on the whole validation items (8 s, zero state):
``erle_db`` (microphone over output power after 2 s of items without a near end, the room noise
included, as the echo bench measures it), ``erle_lin_db`` (the same for the linear filter alone) and
``sisdr_db`` / ``sisdr_lin_db`` (SI-SDR against the target, items with a near end). ``score`` =
``sisdr_db + 0.25 erle_db`` picks the best model (``--best-dir``: ``best.pt``, ``best.onnx``).

**Checkpoint**: ``train/echo/checkpoint.pt`` (weights, optimizer, step, run arguments, counters, best
score, RNG state), atomically every ``--ckpt-min`` minutes, at the end and on SIGTERM/SIGINT;
``train/echo/curve.csv`` the learning curve (cut back to the checkpoint on ``--resume``).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import logging
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

HERE = Path(__file__).resolve().parent
DENOISE = HERE.parent / "denoise"
sys.path.insert(0, str(DENOISE))
from model import HOP, Denoiser, ModelConfig, count_macs_per_frame, count_params, istft, stft  # noqa: E402

_spec = importlib.util.spec_from_file_location("denoise_train", DENOISE / "train.py")
assert _spec is not None and _spec.loader is not None
dt = importlib.util.module_from_spec(_spec)
sys.modules["denoise_train"] = dt
_spec.loader.exec_module(dt)

log = logging.getLogger("train-echo")
RATE = 16000
SETTLE = 2 * RATE  # ERLE after the canceller's first 2 s, as the echo bench
RUN_ARGS = ("seed", "total_steps", "warmup", "lr", "channels", "batch", "crop")
CURVE_FIELDS = ["step", "audio_hours", "erle_db", "erle_lin_db", "sisdr_db", "sisdr_lin_db", "score", "lr",
                "wall_hours", "cpu_hours", "train_loss"]  # fmt: skip
SCALE = 1.0 / 32767.0


def spectra(x: Tensor) -> Tensor:
    """(B, 3, L) int16-scaled signals lin, est, ref -> the model input (B, L / 160, 161, 6)."""
    return torch.cat([torch.view_as_real(stft(x[:, k])) for k in range(3)], dim=-1).contiguous()


def batch_of(arr: np.ndarray, seed: int, step: int, size: int, length: int) -> tuple[Tensor, Tensor]:
    """Batch ``step``: random crops (inputs (B, 3, L), target (B, L)), float32, full scale 1."""
    rng = np.random.default_rng([seed, step])
    n_items, _, n = arr.shape
    idx = rng.integers(0, n_items, size)
    starts = rng.integers(0, (n - length) // HOP + 1, size) * HOP
    x = np.stack([arr[i, :, s : s + length] for i, s in zip(idx, starts, strict=True)]).astype(np.float32)
    x *= SCALE
    gains = 10 ** (rng.uniform(-6, 6, size) / 20).astype(np.float32)  # level augmentation, all streams
    x *= gains[:, None, None]
    return torch.from_numpy(x[:, :3]), torch.from_numpy(x[:, 3])


def evaluate(model: Denoiser, val: np.ndarray, near: np.ndarray) -> dict[str, float]:
    """Validation figures (module docstring) over the whole validation items."""
    model.eval()
    outs = []
    with torch.no_grad():
        for a in range(0, len(val), 16):
            x = torch.from_numpy(val[a : a + 16, :3].astype(np.float32) * SCALE)
            y, _, _ = model(spectra(x), model.initial_state(x.shape[0]))
            outs.append(istft(torch.view_as_complex(y.contiguous()), x.shape[-1]))
    model.train()
    out = torch.cat(outs).numpy().astype(np.float64)
    lin = val[:, 0].astype(np.float64) * SCALE
    mic = lin + val[:, 1].astype(np.float64) * SCALE
    tgt = val[:, 3].astype(np.float64) * SCALE
    valid = slice(0, val.shape[-1] - HOP)

    def db(a: np.ndarray, b: np.ndarray) -> float:
        return float(10 * np.log10((np.sum(a**2) + 1e-12) / (np.sum(b**2) + 1e-12)))

    far = ~near
    span = slice(SETTLE, -HOP)
    res = {"erle_db": float(np.mean([db(mic[i, span], out[i, span]) for i in np.flatnonzero(far)])),
           "erle_lin_db": float(np.mean([db(mic[i, span], lin[i, span]) for i in np.flatnonzero(far)]))}
    o, t, li = (torch.from_numpy(v[near][:, valid]) for v in (out, tgt, lin))
    res["sisdr_db"] = float(dt.si_sdr(o, t).mean())
    res["sisdr_lin_db"] = float(dt.si_sdr(li, t).mean())
    res["score"] = res["sisdr_db"] + 0.25 * res["erle_db"]
    return res




def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("/work/voxd-train/echo"))
    ap.add_argument("--checkpoint", type=Path, default=HERE / "checkpoint.pt")
    ap.add_argument("--curve", type=Path, default=HERE / "curve.csv")
    ap.add_argument("--best-dir", type=Path, default=Path("/work/voxd-train/echo-best"))
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--total-steps", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=float, default=4.0, help="crop seconds")
    ap.add_argument("--ckpt-min", type=float, default=10.0)
    ap.add_argument("--val-every", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--log-every", type=int, default=25)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    ck: dict[str, object] | None = None
    if args.resume and args.checkpoint.exists():
        ck = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
        for k in RUN_ARGS:
            setattr(args, k, ck["run_args"][k])  # type: ignore[index]
    cfg = ModelConfig(**ck["cfg"]) if ck else ModelConfig(channels=args.channels, aux=2)  # type: ignore[arg-type]
    torch.manual_seed(args.seed)
    model = Denoiser(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    step, audio_h, wall_h, cpu_h, best = 0, 0.0, 0.0, 0.0, -1e9
    if ck is not None:
        model.load_state_dict(ck["model"])  # type: ignore[arg-type]
        opt.load_state_dict(ck["opt"])  # type: ignore[arg-type]
        step, audio_h = int(ck["step"]), float(ck["audio_hours"])  # type: ignore[arg-type]
        wall_h, cpu_h, best = float(ck["wall_hours"]), float(ck["cpu_hours"]), float(ck["best"])  # type: ignore[arg-type]
        torch.set_rng_state(ck["torch_rng"])  # type: ignore[arg-type]
        dt.truncate_curve(args.curve, step)
    log.info("model %s: %d parameters, %.1f M MAC/s, state %d floats; %s", cfg.to_dict(), count_params(model),
             count_macs_per_frame(model) * 100 / 1e6, model.state_size,
             json.dumps({k: str(v) for k, v in vars(args).items()}))  # fmt: skip

    arr = np.load(args.data / "train.npy", mmap_mode="r")
    val = np.load(args.data / "val.npy")
    with open(args.data / "val.jsonl") as fh:
        near = np.array([json.loads(line)["ser_db"] is not None for line in fh])

    def checkpoint() -> None:
        dt.save_atomic({"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                        "audio_hours": audio_h, "wall_hours": wall_h, "cpu_hours": cpu_h, "best": best,
                        "cfg": cfg.to_dict(), "run_args": {k: getattr(args, k) for k in RUN_ARGS},
                        "torch_rng": torch.get_rng_state(), "format": "voxd-echo checkpoint 1"},
                       args.checkpoint)  # fmt: skip

    def add_curve(row: dict[str, object]) -> None:
        new = not args.curve.exists()
        with open(args.curve, "a", newline="") as fh:
            w = csv.DictWriter(fh, CURVE_FIELDS, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)

    def validate(lr: float, train_loss: float) -> None:
        nonlocal best
        res = evaluate(model, val, near)
        log.info("validation at step %d: %s", step, json.dumps({k: round(v, 3) for k, v in res.items()}))
        add_curve({"step": step, "audio_hours": f"{audio_h:.3f}", **{k: f"{v:.3f}" for k, v in res.items()},
                   "lr": f"{lr:.3e}", "wall_hours": f"{wall_h:.3f}", "cpu_hours": f"{cpu_h:.3f}",
                   "train_loss": f"{train_loss:.4f}"})  # fmt: skip
        if res["score"] > best:
            best = res["score"]
            args.best_dir.mkdir(parents=True, exist_ok=True)
            dt.save_atomic({"model": model.state_dict(), "cfg": cfg.to_dict(), "step": step, **res},
                           args.best_dir / "best.pt")  # fmt: skip

    stop = {"sig": 0}

    def on_signal(signum: int, _frame: object) -> None:
        stop["sig"] = signum

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if step == 0 and not args.curve.exists():
        validate(0.0, float("nan"))

    length = int(args.crop * RATE) // HOP * HOP
    t_ckpt = t_prev = time.monotonic()
    c_prev = dt.cpu_seconds()
    acc, n_acc = 0.0, 0
    model.train()
    while step < args.total_steps:
        x, tgt = batch_of(arr, args.seed, step, args.batch, length)
        x, tgt = x.to(device), tgt.to(device)
        lr = dt.lr_at(step, args.lr, args.warmup, args.total_steps)
        for g in opt.param_groups:
            g["lr"] = lr
        spec = spectra(x)
        enh, _, _ = model(spec, model.initial_state(x.shape[0]).to(device))
        loss, _parts = dt.loss_fn(enh, spec[..., :2], tgt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if torch.isfinite(gn) and torch.isfinite(loss):
            opt.step()
        step += 1
        audio_h += args.batch * length / RATE / 3600
        acc += float(loss.detach())
        n_acc += 1
        now, cnow = time.monotonic(), dt.cpu_seconds()
        wall_h += (now - t_prev) / 3600
        cpu_h += (cnow - c_prev) / 3600
        t_prev, c_prev = now, cnow
        train_loss = acc / max(n_acc, 1)
        if step % args.log_every == 0:
            log.info("step %d loss %.4f lr %.2e gn %.2f, %.2f audio h, %.3f CPU h", step, train_loss, lr,
                     float(gn), audio_h, cpu_h)  # fmt: skip
            acc, n_acc = 0.0, 0
        if step % args.val_every == 0 or step == args.total_steps:
            validate(lr, train_loss)
        if time.monotonic() - t_ckpt > args.ckpt_min * 60 or step == args.total_steps or stop["sig"]:
            checkpoint()
            t_ckpt = time.monotonic()
            log.info("checkpoint at step %d -> %s", step, args.checkpoint)
        if stop["sig"]:
            log.info("stopped (signal %d) at step %d", stop["sig"], step)
            return
    log.info("done: %d steps, %.1f audio hours, %.2f CPU hours", step, audio_h, cpu_h)


if __name__ == "__main__":
    main()
