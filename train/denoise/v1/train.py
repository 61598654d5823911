"""Train the streaming denoiser on CPU (or a GPU when one is there), with checkpoints and resume.

Run from the repository root with the training venv (torch is not a runtime dependency)::

    V=/work/voxd-train/venv/bin/python
    # fresh run (writes RUN/train.log, RUN/metrics.jsonl, RUN/ckpt-<step>.pt, RUN/best.pt)
    nohup nice -n 19 $V train/denoise/v1/train.py --data /work/voxd-train/data \
        --run /work/voxd-train/runs/r1 > /work/voxd-train/runs/r1.out 2>&1 &
    # resume the latest checkpoint of that run (same batches from there on: data are a function of step)
    nohup nice -n 19 $V train/denoise/v1/train.py --data /work/voxd-train/data \
        --run /work/voxd-train/runs/r1 --resume >> /work/voxd-train/runs/r1.out 2>&1 &

Loss per utterance: ``0.05 * -SI-SDR(dB)`` plus a multi-resolution spectral term (STFT sizes 256, 512,
1024 with 50 % overlap) on magnitudes compressed to the power 0.3: squared error of the compressed
magnitudes plus squared error of the compressed complex spectra, each relative to the target's energy
in that domain (so the loss does not depend on the level). The last 10 ms of each segment (not fully
covered by synthesis windows) are left out.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dn_data import RATE, MixtureMaker
from dn_model import HOP, Denoiser, ModelConfig, count_macs_per_frame

log = logging.getLogger("train")
VAL_SEED = 987654


def si_sdr(est: Tensor, ref: Tensor, eps: float = 1e-8) -> Tensor:
    """Scale-invariant SDR in dB per row of (B, L) -> (B,)."""
    alpha = (est * ref).sum(-1, keepdim=True) / ((ref * ref).sum(-1, keepdim=True) + eps)
    proj = alpha * ref
    return 10 * torch.log10((proj * proj).sum(-1) / (((est - proj) ** 2).sum(-1) + eps) + eps)


def spectral_loss(est: Tensor, ref: Tensor, c: float = 0.3) -> Tensor:
    """Multi-resolution compressed spectral loss per row of (B, L) -> (B,); see the module docstring."""
    total = torch.zeros(est.shape[0], device=est.device)
    for n_fft in (256, 512, 1024):
        w = torch.hann_window(n_fft, device=est.device)
        ye = torch.stft(est, n_fft, n_fft // 2, window=w, return_complex=True)
        yr = torch.stft(ref, n_fft, n_fft // 2, window=w, return_complex=True)
        me = (ye.abs() + 1e-8) ** c
        mr = (yr.abs() + 1e-8) ** c
        ce = me * ye / (ye.abs() + 1e-8)
        cr = mr * yr / (yr.abs() + 1e-8)
        norm = (mr * mr).sum((-1, -2)) + 1e-6
        total = total + ((me - mr) ** 2).sum((-1, -2)) / norm + (ce - cr).abs().pow(2).sum((-1, -2)) / norm
    return total / 3


def loss_fn(est: Tensor, ref: Tensor) -> tuple[Tensor, dict[str, float]]:
    """Training loss (scalar) and its parts for the log."""
    sdr = si_sdr(est, ref).clamp(max=50.0)
    spec = spectral_loss(est, ref)
    loss = (spec - 0.05 * sdr).mean()
    return loss, {"spec": float(spec.detach().mean()), "sisdr": float(sdr.detach().mean())}


class Batches(torch.utils.data.IterableDataset):
    """Batches ``start .. stop-1`` of a run, made in a worker process."""

    def __init__(self, data: Path, seed: int, start: int, stop: int, size: int, length: int) -> None:
        self.data, self.seed, self.start, self.stop, self.size, self.length = (
            data,
            seed,
            start,
            stop,
            size,
            length,
        )

    def __iter__(self):  # type: ignore[no-untyped-def]
        torch.set_num_threads(1)
        maker = MixtureMaker(self.data, "train", self.length)
        for step in range(self.start, self.stop):
            noisy, clean = maker.batch(self.seed, step, self.size)
            yield step, torch.from_numpy(noisy), torch.from_numpy(clean)


def make_val(data: Path, n: int, seconds: float) -> tuple[Tensor, Tensor]:
    """Fixed validation mixtures from the held-out split: (noisy, clean) float32 (n, samples)."""
    maker = MixtureMaker(data, "val", int(seconds * RATE))
    noisy, clean = maker.batch(VAL_SEED, 0, n)
    return torch.from_numpy(noisy), torch.from_numpy(clean)


def evaluate(model: Denoiser, noisy: Tensor, clean: Tensor, n_pesq: int) -> dict[str, float]:
    """Validation: mean SI-SDR in/out and PESQ-WB in/out on the first ``n_pesq`` items (if installed)."""
    model.eval()
    with torch.no_grad():
        est = torch.cat([model.enhance(noisy[i : i + 16]) for i in range(0, noisy.shape[0], 16)])
    model.train()
    valid = noisy.shape[1] - HOP
    res = {
        "val_sisdr_in": float(si_sdr(noisy[:, :valid], clean[:, :valid]).mean()),
        "val_sisdr_out": float(si_sdr(est[:, :valid], clean[:, :valid]).mean()),
    }
    try:
        from pesq import pesq
    except ImportError:
        return res
    p_in, p_out = [], []
    for i in range(min(n_pesq, noisy.shape[0])):
        ref = clean[i, :valid].numpy()
        try:
            p_in.append(pesq(RATE, ref, noisy[i, :valid].numpy(), "wb"))
            p_out.append(pesq(RATE, ref, est[i, :valid].numpy(), "wb"))
        except Exception:  # pesq refuses items without an utterance; skip them
            continue
    res["val_pesq_in"] = float(np.mean(p_in))
    res["val_pesq_out"] = float(np.mean(p_out))
    return res


def lr_at(step: int, base: float, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to 5 % of ``base`` at ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * p)))


def save_atomic(obj: dict[str, object], path: Path) -> None:
    """torch.save to a temporary name, fsync, then rename (a crash never leaves a torn checkpoint)."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def latest_checkpoint(run: Path) -> Path | None:
    """The checkpoint of ``run`` with the highest step, or None."""
    ck = [(int(m.group(1)), p) for p in run.glob("ckpt-*.pt") if (m := re.match(r"ckpt-(\d+)\.pt$", p.name))]
    return max(ck)[1] if ck else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("/work/voxd-train/data"))
    ap.add_argument("--run", type=Path, required=True, help="run directory: log, metrics, checkpoints")
    ap.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    ap.add_argument("--init", type=Path, help="start from these weights (new optimizer, step 0)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seg-s", type=float, default=3.0, help="training segment length, seconds")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=1000)
    ap.add_argument("--max-steps", type=int, default=60000)
    ap.add_argument("--ckpt-min", type=float, default=10.0, help="checkpoint every N minutes")
    ap.add_argument("--val-every", type=int, default=500, help="validate every K steps")
    ap.add_argument("--val-items", type=int, default=96)
    ap.add_argument("--val-pesq", type=int, default=48, help="validation items scored with PESQ")
    ap.add_argument(
        "--threads",
        default="1",
        help="torch threads: a number, or 'auto' (measure 1 vs 2 every 1000 steps and keep the faster). On"
        " this shared 2-core machine at nice 19, 2 threads stall whenever one core is busy (each OpenMP"
        " region waits for the starved thread): 2.6-7 s/step against 2-3 s/step with 1 thread",
    )
    ap.add_argument("--workers", type=int, default=1, help="data worker processes")
    ap.add_argument("--log-every", type=int, default=50)
    args = ap.parse_args()

    run: Path = args.run
    run.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(message)s",
        handlers=[logging.FileHandler(run / "train.log"), logging.StreamHandler()],
    )
    auto_threads = args.threads == "auto"
    torch.set_num_threads(2 if auto_threads else int(args.threads))
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    cfg = ModelConfig()
    step, best = 0, -1e9
    ckpt = latest_checkpoint(run) if args.resume else None
    if ckpt is not None:
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        cfg = ModelConfig(**state["cfg"])
    model = Denoiser(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    if ckpt is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, best = int(state["step"]), float(state["best"])
        log.info("resumed from %s at step %d", ckpt, step)
    elif args.init is not None:
        model.load_state_dict(torch.load(args.init, map_location="cpu", weights_only=False)["model"])
        log.info("initialised from %s", args.init)
    elif args.resume:
        log.info("--resume: no checkpoint in %s, starting fresh", run)
    n_params = sum(p.numel() for p in model.parameters())
    macs = count_macs_per_frame(model)
    log.info(
        "model %s: %d parameters, %.1f M MAC/s, state %d floats; args %s",
        cfg.to_dict(), n_params, macs * 100 / 1e6, model.state_size, vars(args),
    )  # fmt: skip

    val_noisy, val_clean = make_val(args.data, args.val_items, 4.0)
    length = int(args.seg_s * RATE) // HOP * HOP
    loader = torch.utils.data.DataLoader(
        Batches(args.data, args.seed, step, args.max_steps, args.batch, length),
        batch_size=None,
        num_workers=args.workers,
        prefetch_factor=4 if args.workers else None,
        persistent_workers=False,
    )

    def checkpoint(tag: str | None = None) -> None:
        obj = {"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "best": best,
               "cfg": cfg.to_dict(), "args": {k: str(v) for k, v in vars(args).items()}}  # fmt: skip
        if tag is None:
            save_atomic(obj, run / f"ckpt-{step:07d}.pt")
            old = sorted(run.glob("ckpt-*.pt"))[:-3]
            for p in old:
                p.unlink()
        else:
            save_atomic(obj, run / f"{tag}.pt")

    metrics = open(run / "metrics.jsonl", "a")  # noqa: SIM115 (kept open for the whole run)
    last_ckpt = time.monotonic()
    t0, t_data, n_logged = time.monotonic(), 0.0, 0
    acc: dict[str, float] = {"loss": 0.0, "spec": 0.0, "sisdr": 0.0}
    t_wait = time.monotonic()
    stop = {"sig": 0}

    def on_signal(signum: int, _frame: object) -> None:  # checkpoint after the current step, then exit
        stop["sig"] = signum

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    probe: dict[int, float] = {}  # threads -> seconds per step, measured in the current probe window
    t_step = time.monotonic()
    model.train()
    for step_b, noisy, clean in loader:
        assert step_b == step, (step_b, step)
        t_data += time.monotonic() - t_wait
        noisy, clean = noisy.to(device), clean.to(device)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.lr, args.warmup, args.max_steps)
        est = model.enhance(noisy)
        valid = noisy.shape[1] - HOP
        loss, parts = loss_fn(est[:, :valid], clean[:, :valid])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if torch.isfinite(gn):
            opt.step()
        if auto_threads:  # steps k*1000 + 0..19: 1 thread, + 20..39: 2 threads, then the faster
            now, phase = time.monotonic(), step % 1000
            if 5 <= phase < 20 or 25 <= phase < 40:
                nt = 1 if phase < 20 else 2
                probe[nt] = probe.get(nt, 0.0) + (now - t_step) / 15
            t_step = now
            if phase == 0:
                probe = {}
                torch.set_num_threads(1)
            elif phase == 20:
                torch.set_num_threads(2)
            elif phase == 40:
                best_nt = min(probe, key=probe.__getitem__)
                torch.set_num_threads(best_nt)
                log.info("threads: %s s/step -> %d", {k: round(v, 2) for k, v in probe.items()}, best_nt)
        acc["loss"] += float(loss)
        acc["spec"] += parts["spec"]
        acc["sisdr"] += parts["sisdr"]
        n_logged += 1
        step += 1

        if step % args.log_every == 0:
            dt = time.monotonic() - t0
            rec = {k: v / n_logged for k, v in acc.items()}
            rec.update(step=step, lr=opt.param_groups[0]["lr"], steps_per_s=n_logged / dt,
                       data_wait=t_data / dt, grad_norm=float(gn))  # fmt: skip
            log.info("step %d loss %.4f spec %.4f sisdr %.2f lr %.2e  %.3f steps/s (data wait %.0f %%)",
                     step, rec["loss"], rec["spec"], rec["sisdr"], rec["lr"], rec["steps_per_s"],
                     100 * rec["data_wait"])  # fmt: skip
            metrics.write(json.dumps(rec) + "\n")
            metrics.flush()
            acc = dict.fromkeys(acc, 0.0)
            t0, t_data, n_logged = time.monotonic(), 0.0, 0
        if step % args.val_every == 0 or step == args.max_steps:
            tv = time.monotonic()
            res = evaluate(model, val_noisy, val_clean, args.val_pesq)
            score = res.get("val_pesq_out", res["val_sisdr_out"] / 10)
            res["step"] = step
            log.info("validation %s (%.0f s)", json.dumps(res), time.monotonic() - tv)
            metrics.write(json.dumps(res) + "\n")
            metrics.flush()
            if score > best:
                best = score
                checkpoint("best")
            t0 += time.monotonic() - tv
        if time.monotonic() - last_ckpt > args.ckpt_min * 60 or step == args.max_steps or stop["sig"]:
            checkpoint()
            last_ckpt = time.monotonic()
            log.info("checkpoint at step %d", step)
        if stop["sig"]:
            log.info("stopped by signal %d at step %d", stop["sig"], step)
            break
        t_wait = time.monotonic()
    log.info("done at step %d", step)


if __name__ == "__main__":
    main()
