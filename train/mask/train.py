"""Train the array mask model (issue 20), resumable from ONE checkpoint file.

The model is the v2 denoiser's network (``train/denoise/model.py``) with ``mics - 1`` auxiliary input
spectra: it enhances the reference microphone (mic 0) and also sees every other microphone's spectrum
*relative to mic 0* (``Z_m = X_m conj(X_0) / |X_0|``: the other mic's magnitude with the inter-mic
phase difference), per 10 ms hop, causally. Trained to give the target talker's full reverberant image
at mic 0, its per-bin gain ``|enh| / |X_0|`` is a ratio mask of "the target" against everything else
(a point interferer of any kind, diffuse noise, self-noise): the weights of the beamformer's speech and
noise statistics (``beamform`` ``mask:``). The phase differences are what a single-channel denoiser
lacks: they tell a talker at one place from a talker, TV or music at another. One model per microphone
count (``--mics 4``: the 4-mic HAT and the USB 4-mic array; ``--mics 6``).

    V=/work/voxd-train/venv/bin/python
    nohup nice -n 15 $V train/mask/train.py --mics 4 > /work/voxd-train/mask4.out 2>&1 &
    nohup nice -n 15 $V train/mask/train.py --mics 4 --resume >> /work/voxd-train/mask4.out 2>&1 &

**Data**: on-the-fly multichannel mixtures of ``train/mask/data.py`` (``ArrayMixtures``: simulated
rooms from the RIR bank of ``rirs.py``; the prepared speech/noise pools of ``train/denoise``); batch
``k`` is a pure function of ``(seed, k)``, so a resumed run sees the batches it would have seen.

**Loss**: the denoiser's (compressed magnitude + compressed complex spectrum, normalised by the input's
compressed energy, plus 0.01 x SI-SNR) against the target image at mic 0. AdamW, linear warm-up,
cosine decay to 2 % at ``--total-steps``; gradient-norm clipping at 1.

**Validation** every ``--val-every`` steps on fixed validation batches (validation speech/noise split,
validation rooms): ``sisdr_db`` (output vs target image at mic 0), ``sisdr_in_db`` (mic 0 vs the
same), ``mask_err_db`` (mean squared error of the gain against the ideal ratio mask
``min(1, |S_0| / |X_0|)``, in dB) -- best by ``sisdr_db`` (``--best-dir``: ``best.pt``).

**Checkpoint**: ``train/mask/checkpoint-m{mics}.pt`` (weights, optimizer, step, run arguments,
counters, best score, RNG state; well under 8 MB), atomically every ``--ckpt-min`` minutes, at the end
and on SIGTERM/SIGINT; ``train/mask/curve-m{mics}.csv`` the learning curve (cut back to the checkpoint
on ``--resume``).
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
sys.path.insert(0, str(HERE))
from model import Denoiser, ModelConfig, count_macs_per_frame, count_params, istft, stft  # noqa: E402

_spec = importlib.util.spec_from_file_location("denoise_train", DENOISE / "train.py")
assert _spec is not None and _spec.loader is not None
dt = importlib.util.module_from_spec(_spec)
sys.modules["denoise_train"] = dt
_spec.loader.exec_module(dt)

log = logging.getLogger("train-mask")
RATE = 16000
RUN_ARGS = ("seed", "total_steps", "warmup", "lr", "channels", "batch", "crop", "mics", "rooms")
CURVE_FIELDS = ["step", "audio_hours", "sisdr_db", "sisdr_in_db", "mask_err_db", "lr", "wall_hours",
                "cpu_hours", "train_loss"]  # fmt: skip
GEOMETRIES = {4: ("respeaker-4mic-hat", "respeaker-usb-4mic"), 6: ("respeaker-6mic",)}


def relative(spec: Tensor) -> Tensor:
    """Complex spectra ``(B, M, T, F)`` -> the model input ``(B, T, F, 2 M)``: mic 0, then each other mic
    relative to mic 0 (``X_m conj(X_0) / |X_0|``), real and imaginary parts interleaved."""
    x0 = spec[:, 0]
    rot = x0.conj() / torch.sqrt(x0.real**2 + x0.imag**2 + 1e-12)
    parts = [x0] + [spec[:, m] * rot for m in range(1, spec.shape[1])]
    return torch.cat([torch.view_as_real(p) for p in parts], dim=-1).contiguous()


def model_input(mix: Tensor) -> Tensor:
    """``(B, M, L)`` signals -> ``(B, L / 160, 161, 2 M)`` (see :func:`relative`)."""
    b, m, n = mix.shape
    spec = stft(mix.reshape(b * m, n))
    return relative(spec.reshape(b, m, *spec.shape[1:]))


def to_tensors(batch: dict[str, np.ndarray]) -> tuple[Tensor, Tensor]:
    """A data batch -> (mix ``(B, M, L)``, target image at mic 0 ``(B, L)``), float32 tensors."""
    mix = torch.from_numpy(np.ascontiguousarray(batch["mix"], dtype=np.float32))
    tgt = torch.from_numpy(np.ascontiguousarray(batch["target"][:, 0], dtype=np.float32))
    return mix, tgt


def evaluate(model: Denoiser, val: list[tuple[Tensor, Tensor]], device: torch.device) -> dict[str, float]:
    """Validation figures (module docstring) over the fixed validation batches."""
    model.eval()
    sis, sis_in, errs = [], [], []
    with torch.no_grad():
        for mix, tgt in val:
            mix, tgt = mix.to(device), tgt.to(device)
            spec = model_input(mix)
            enh, gain, _ = model(spec, model.initial_state(mix.shape[0]).to(device))
            y = istft(torch.view_as_complex(enh.contiguous()), mix.shape[-1])
            sis.append(dt.si_sdr(y, tgt))
            sis_in.append(dt.si_sdr(mix[:, 0], tgt))
            x0 = torch.view_as_complex(spec[..., :2].contiguous()).abs()
            s0 = stft(tgt).abs()
            ideal = torch.clamp(s0 / (x0 + 1e-9), max=1.0)  # (B, T, F), as the applied gain
            errs.append(torch.mean((gain - ideal) ** 2, dim=(1, 2)))
    model.train()
    return {"sisdr_db": float(torch.cat(sis).mean()), "sisdr_in_db": float(torch.cat(sis_in).mean()),
            "mask_err_db": float(10 * torch.log10(torch.cat(errs).mean() + 1e-12))}




def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mics", type=int, choices=sorted(GEOMETRIES), default=4)
    ap.add_argument("--data", type=Path, default=Path("/work/voxd-train/data"))
    ap.add_argument("--rirs", type=Path, default=Path("/work/voxd-train/mask-rirs"))
    ap.add_argument("--checkpoint", type=Path, default=None, help="default train/mask/checkpoint-m{mics}.pt")
    ap.add_argument("--curve", type=Path, default=None, help="default train/mask/curve-m{mics}.csv")
    ap.add_argument("--best-dir", type=Path, default=None, help="default /work/voxd-train/mask-best-m{mics}")
    ap.add_argument("--rooms", type=int, default=200, help="train on RIR-bank rooms 0 .. N-1 (all built)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--total-steps", type=int, default=6000)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--gpu-batch-mult", type=int, default=8, help="batch x this on a GPU")
    ap.add_argument("--crop", type=float, default=4.0, help="seconds per item")
    ap.add_argument("--val-batches", type=int, default=6)
    ap.add_argument("--ckpt-min", type=float, default=10.0)
    ap.add_argument("--val-every", type=int, default=250)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--log-every", type=int, default=25)
    args = ap.parse_args()
    args.checkpoint = args.checkpoint or HERE / f"checkpoint-m{args.mics}.pt"
    args.curve = args.curve or HERE / f"curve-m{args.mics}.csv"
    args.best_dir = args.best_dir or Path(f"/work/voxd-train/mask-best-m{args.mics}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    ck: dict[str, object] | None = None
    if args.resume and args.checkpoint.exists():
        ck = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
        for k in RUN_ARGS:
            if k in ck["run_args"]:  # type: ignore[operator]
                setattr(args, k, ck["run_args"][k])  # type: ignore[index]
    batch = args.batch * (args.gpu_batch_mult if device.type == "cuda" else 1)
    cfg = (ModelConfig(**ck["cfg"]) if ck  # type: ignore[arg-type]
           else ModelConfig(channels=args.channels, aux=args.mics - 1))
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
    log.info("model %s: %d parameters, %.1f M MAC/s, state %d floats; device %s batch %d; %s", cfg.to_dict(),
             count_params(model), count_macs_per_frame(model) * 100 / 1e6, model.state_size, device, batch,
             json.dumps({k: str(v) for k, v in vars(args).items()}))  # fmt: skip

    # by path: train/denoise/data.py (imported by the denoiser's train.py above) is also called "data"
    _mspec = importlib.util.spec_from_file_location("mask_data", HERE / "data.py")
    assert _mspec is not None and _mspec.loader is not None
    mask_data = importlib.util.module_from_spec(_mspec)
    sys.modules["mask_data"] = mask_data
    _mspec.loader.exec_module(mask_data)
    ArrayMixtures = mask_data.ArrayMixtures

    train_data = ArrayMixtures(args.data, args.rirs, "train", max_rooms=args.rooms)
    val_data = ArrayMixtures(args.data, args.rirs, "val")
    geos = GEOMETRIES[args.mics]
    val = [to_tensors(val_data.batch(1000 + i, i, 8, args.crop, geometry=geos[i % len(geos)]))
           for i in range(args.val_batches)]

    def checkpoint() -> None:
        dt.save_atomic({"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                        "audio_hours": audio_h, "wall_hours": wall_h, "cpu_hours": cpu_h, "best": best,
                        "cfg": cfg.to_dict(), "run_args": {k: getattr(args, k) for k in RUN_ARGS},
                        "torch_rng": torch.get_rng_state(), "format": "voxd-mask checkpoint 1"},
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
        res = evaluate(model, val, device)
        log.info("validation at step %d: %s", step, json.dumps({k: round(v, 3) for k, v in res.items()}))
        add_curve({"step": step, "audio_hours": f"{audio_h:.3f}", **{k: f"{v:.3f}" for k, v in res.items()},
                   "lr": f"{lr:.3e}", "wall_hours": f"{wall_h:.3f}", "cpu_hours": f"{cpu_h:.3f}",
                   "train_loss": f"{train_loss:.4f}"})  # fmt: skip
        if res["sisdr_db"] > best:
            best = res["sisdr_db"]
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

    t_ckpt = t_prev = time.monotonic()
    c_prev = dt.cpu_seconds()
    acc, n_acc = 0.0, 0
    model.train()
    while step < args.total_steps:
        mix, tgt = to_tensors(train_data.batch(args.seed, step, batch, args.crop,
                                               geometry=geos[step % len(geos)]))
        mix, tgt = mix.to(device), tgt.to(device)
        lr = dt.lr_at(step, args.lr, args.warmup, args.total_steps)
        for g in opt.param_groups:
            g["lr"] = lr
        spec = model_input(mix)
        enh, _, _ = model(spec, model.initial_state(mix.shape[0]).to(device))
        loss, _parts = dt.loss_fn(enh, spec[..., :2], tgt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if torch.isfinite(gn) and torch.isfinite(loss):
            opt.step()
        step += 1
        audio_h += batch * mix.shape[-1] / RATE / 3600
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
