"""Fetch, decode and index the denoiser's training audio from Debian packages.

Reproducible: the packages are fetched with ``apt-get download`` (no system install) and unpacked with
``dpkg-deb -x`` under ``DATA/pkgs``; every kept file is decoded (soundfile; libsndfile handles wav, ogg
vorbis, ogg opus and flac; codec2's headerless ``.raw`` is 8 kHz s16le), down-mixed, resampled to 16 kHz
(soxr, VHQ), trimmed of leading/trailing silence and stored as one float32 array per role and split:

``DATA/audio/{speech,noise}_{train,val}.f32``  raw little-endian float32 samples, files back to back
``DATA/audio/index.json``                      one record per kept file (package, version, path, group,
                                               split, offset, length, active level in dBFS, ...)
``DATA/audio/inventory.txt``                   minutes of audio per package and role
``DATA/rirs.npz``                              a bank of simulated room impulse responses (pyroomacoustics)

The validation split holds out whole groups (a fillets level, a language of a word list, a codec2 talker)
chosen by a hash of the group name, so no validation file shares a group with a training file.

Usage (one command; idempotent; about 6 minutes on 2 shared cores, 0.9 GB of downloads)::

    python train/denoise/v1/prepare_data.py --data /work/voxd-train/data \
        --exclude-meta ../shared/bench/dev/mono/meta.jsonl --exclude-meta ../shared/bench/dev/asr/meta.jsonl \
        --exclude-meta ../shared/bench/dev/vad/meta.jsonl --exclude-meta ../shared/bench/dev/array/meta.jsonl

``--exclude-meta`` drops every source file that an evaluation set uses (decontamination: the evaluation
sets draw some speech from the same packages); it never reads the evaluation audio itself.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import re
import subprocess
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

RATE = 16000
VAL_FRACTION = 0.06  # fraction of groups held out for validation

# role, package -> (regex on the path inside the package, group function)
SPEECH_PACKAGES = [
    "fillets-ng-data-cs",
    "fillets-ng-data-nl",
    "tuxpaint-stamps-default",
    "klettres-data",
    "ktuberling-data",
    "qabcs-data",
    "codec2-examples",
]
NOISE_PACKAGES = [
    "wesnoth-1.16-music",
    "megaglest-data",
    "lincity-ng-data",
    "sonic-pi-samples",
    "bucklespring-data",
    "scorched3d-data",
    "asterisk-moh-opsound-wav",
]
AUDIO_EXT = r"\.(ogg|wav|opus|flac|raw)$"
# codec2: clean speech only (not the modem/sine test signals, not the recordings with a steady noise
# floor: the HF-radio ve9qrp/vk5qi, david4, vk2tpm_004, mmt1; not all.wav, which concatenates others)
CODEC2_SPEECH = {
    "big_dog.wav", "cross.wav", "f2400.wav", "forig.wav", "hts1a.wav", "hts2a.wav", "m2400.wav",
    "morig.wav", "wia_16kHz.wav", "speech_orig_16k.wav",
}  # fmt: skip
# megaglest unit sounds that are voices (acknowledgements, shouts, death cries): not noise
MEGAGLEST_VOICE = re.compile(r"_(ack|select|attack|die|hit|summon|heal|prod)\d*\.|good_morning|attention")


@dataclass
class Item:
    """One source file to decode."""

    package: str
    version: str
    path: str  # inside the package, e.g. usr/share/...
    role: str  # speech | noise
    group: str  # unit of the train/val split


def _select(package: str, rel: str) -> tuple[str, str] | None:
    """Role and group of ``rel`` (a path inside ``package``), or None to skip it."""
    name = rel.rsplit("/", 1)[-1]
    if package.startswith("fillets-ng-data-"):
        m = re.match(r"usr/share/games/fillets-ng/sound/([^/]+)/(cs|nl)/[^/]+\.ogg$", rel)
        return ("speech", f"{package}:{m.group(1)}") if m else None
    if package == "tuxpaint-stamps-default":
        m = re.search(r"_desc(?:_([a-zA-Z@]+))?\.ogg$", rel)
        return ("speech", f"{package}:{m.group(1) or 'en'}") if m else None
    if package == "klettres-data":
        m = re.match(r"usr/share/klettres/([^/]+)/(alpha|syllab)/[^/]+\.ogg$", rel)
        return ("speech", f"{package}:{m.group(1)}") if m else None
    if package == "ktuberling-data":
        m = re.match(r"usr/share/ktuberling/sounds/([^/]+)/[^/]+\.(ogg|wav|opus)$", rel)
        return ("speech", f"{package}:{m.group(1)}") if m else None
    if package == "qabcs-data":
        m = re.match(r"usr/share/qabcs/abcs/([^/]+)/sounds/", rel)
        return ("speech", f"{package}:{m.group(1)}") if m and re.search(AUDIO_EXT, rel) else None
    if package == "codec2-examples":
        return ("speech", f"{package}:{name.split('.')[0]}") if name in CODEC2_SPEECH else None
    if package in NOISE_PACKAGES and re.search(AUDIO_EXT, rel):
        if package == "megaglest-data" and MEGAGLEST_VOICE.search(name):
            return None
        return "noise", f"{package}:{name}"
    return None


def fetch(data: Path, packages: list[str]) -> dict[str, str]:
    """Download and unpack ``packages`` under ``data``; return {package: version}."""
    debs, pkgs = data / "debs", data / "pkgs"
    debs.mkdir(parents=True, exist_ok=True)
    missing = [p for p in packages if not list(debs.glob(f"{p}_*.deb"))]
    if missing:
        subprocess.run(["apt-get", "download", *missing], cwd=debs, check=True)
    versions = {}
    for p in packages:
        (deb,) = debs.glob(f"{p}_*.deb")
        out = pkgs / p
        if not out.exists():
            tmp = pkgs / f".{p}.tmp"
            subprocess.run(["rm", "-rf", str(tmp)], check=True)
            tmp.mkdir(parents=True)
            subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True)
            tmp.rename(out)
        versions[p] = subprocess.run(
            ["dpkg-deb", "-f", str(deb), "Version"], capture_output=True, text=True, check=True
        ).stdout.strip()
    return versions


def decode(path: Path) -> np.ndarray:
    """Decode ``path`` to float32 mono 16 kHz, shape (n,)."""
    if path.suffix == ".raw":
        x = np.fromfile(path, "<i2").astype(np.float32) / 32768.0
        sr = 16000 if "16k" in path.name else 8000
    else:
        x, sr = sf.read(str(path), dtype="float32", always_2d=True)
        x = x.mean(axis=1)
    if sr != RATE:
        x = soxr.resample(x, sr, RATE, quality="VHQ").astype(np.float32)
    return np.ascontiguousarray(x, np.float32)


def frame_db(x: np.ndarray, n: int = 320) -> np.ndarray:
    """RMS level in dBFS of consecutive ``n``-sample frames of ``x`` (n,) -> (n // 320,)."""
    m = x.size // n
    if m == 0:
        return np.full(1, -120.0)
    e = np.mean(x[: m * n].reshape(m, n).astype(np.float64) ** 2, axis=1)
    return 10.0 * np.log10(e + 1e-12)


def trim(x: np.ndarray, role: str) -> tuple[np.ndarray, dict[str, float]] | None:
    """Trim leading/trailing silence; None when ``x`` is silence only (or too short to use).

    Silence: 20 ms frames more than 45 dB (speech; 60 dB noise) below the loudest frame or below
    -70 dBFS. 60 ms of margin is kept on each side. Also returns level statistics in dB.
    """
    db = frame_db(x)
    peak = float(db.max())
    if peak < -60.0:
        return None
    thr = max(peak - (45.0 if role == "speech" else 60.0), -70.0)
    on = np.flatnonzero(db > thr)
    a = max(0, (on[0] - 3) * 320)
    b = min(x.size, (on[-1] + 4) * 320)
    y = x[a:b]
    act = db[on[0] : on[-1] + 1]
    act = act[act > thr]
    if y.size < (RATE // 4 if role == "speech" else RATE // 10):
        return None
    # active level: mean power of the frames above threshold; floor: 10th percentile frame level
    level = float(10 * np.log10(np.mean(10 ** (act / 10))))
    floor = float(np.percentile(db[on[0] : on[-1] + 1], 10))
    return y, {"level_db": level, "floor_db": floor, "peak_frame_db": peak}


def _work(args: tuple[Path, Item]) -> tuple[Item, np.ndarray | None, dict[str, float], str]:
    pkgs, item = args
    p = pkgs / item.package / item.path
    try:
        x = decode(p)
    except Exception as e:  # an unreadable asset is recorded and skipped
        return item, None, {}, f"decode: {e}"
    r = trim(x, item.role)
    if r is None:
        return item, None, {}, "silent or too short"
    return item, r[0], r[1], ""


def make_rirs(n: int, seed: int) -> dict[str, np.ndarray]:
    """``n`` shoebox room impulse responses at 16 kHz, (n, 8000) float32, with the direct-path index.

    Rooms 3x3x2.4 .. 9x7x3.5 m, RT60 0.15 .. 0.9 s (absorption and image-source order from
    pyroomacoustics' ``inverse_sabine``, order capped at 20), source and mic at least 0.5 m from the
    walls, 0.5 .. 4 m apart. Each RIR starts 40 samples before its direct path and is peak-normalised.
    """
    import pyroomacoustics as pra

    rng = np.random.default_rng(seed)
    out = np.zeros((n, RATE // 2), np.float32)
    direct = np.zeros(n, np.int32)
    rt = np.zeros(n, np.float32)
    for i in range(n):
        while True:
            dims = rng.uniform([3, 3, 2.4], [9, 7, 3.5])
            t60 = rng.uniform(0.15, 0.9)
            try:
                absorb, order = pra.inverse_sabine(t60, dims)
            except ValueError:
                continue
            room = pra.ShoeBox(dims, fs=RATE, materials=pra.Material(absorb), max_order=min(order, 20))
            src = rng.uniform([0.5, 0.5, 1.0], dims - [0.5, 0.5, 0.7])
            mic = rng.uniform([0.5, 0.5, 0.7], dims - [0.5, 0.5, 0.7])
            d = float(np.linalg.norm(src - mic))
            if 0.5 <= d <= 4.0:
                break
        room.add_source(src)
        room.add_microphone(mic)
        room.compute_rir()
        h = np.asarray(room.rir[0][0], np.float64)
        k = int(np.argmax(np.abs(h)))
        h = h[max(0, k - 40) :]  # keep the delay short, 40 samples before the direct path
        h = h[: out.shape[1]]
        out[i, : h.size] = h / np.abs(h).max()
        direct[i] = min(k, 40)
        rt[i] = t60
    return {"rir": out, "direct": direct, "rt60": rt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("/work/voxd-train/data"))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--rirs", type=int, default=3000, help="number of simulated RIRs")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--exclude-meta", type=Path, action="append", default=[],
                    help="JSONL of an evaluation set; its source files are left out of training")  # fmt: skip
    args = ap.parse_args()
    data: Path = args.data
    versions = fetch(data, SPEECH_PACKAGES + NOISE_PACKAGES)

    excluded: set[tuple[str, str]] = set()
    for meta in args.exclude_meta:
        for line in meta.read_text().splitlines():
            if line.strip():
                for s in json.loads(line).get("sources", []):
                    excluded.add((s.get("package", ""), s.get("file", "")))

    items: list[Item] = []
    seen_hash: set[str] = set()
    n_excl = n_dup = 0
    for p in SPEECH_PACKAGES + NOISE_PACKAGES:
        root = data / "pkgs" / p
        for f in sorted(root.rglob("*")):
            if not f.is_file():
                continue
            rel = f.relative_to(root).as_posix()
            sel = _select(p, rel)
            if sel is None:
                continue
            if (p, rel) in excluded:
                n_excl += 1
                continue
            h = hashlib.sha1(f.read_bytes()).hexdigest()
            if h in seen_hash:  # identical asset shipped twice (tileset sounds, ...)
                n_dup += 1
                continue
            seen_hash.add(h)
            items.append(Item(p, versions[p], rel, sel[0], sel[1]))
    print(f"{len(items)} files selected ({n_excl} excluded as evaluation sources, {n_dup} duplicates)")

    def split_of(group: str) -> str:
        u = int(hashlib.sha1(group.encode()).hexdigest()[:8], 16) / 2**32
        return "val" if u < VAL_FRACTION else "train"

    audio = data / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    offsets: dict[tuple[str, str], int] = defaultdict(int)
    index: list[dict[str, object]] = []
    skipped: dict[str, int] = defaultdict(int)
    keys = [(r, s) for r in ("speech", "noise") for s in ("train", "val")]
    with ExitStack() as stack, mp.Pool(args.jobs) as pool:
        outs = {k: stack.enter_context(open(audio / f"{k[0]}_{k[1]}.f32.tmp", "wb")) for k in keys}
        for item, y, stats, why in pool.imap(_work, [(data / "pkgs", it) for it in items], chunksize=16):
            if y is None:
                skipped[f"{item.package}: {why.split(':')[0]}"] += 1
                continue
            split = split_of(item.group)
            key = (item.role, split)
            outs[key].write(y.astype("<f4").tobytes())
            rec = {**asdict(item), "split": split, "offset": offsets[key], "length": int(y.size)}
            index.append({**rec, **stats})
            offsets[key] += int(y.size)
    for r, s in keys:
        (audio / f"{r}_{s}.f32.tmp").rename(audio / f"{r}_{s}.f32")

    # inventory: minutes per package / role / split
    inv: dict[tuple[str, str, str], list[float]] = defaultdict(lambda: [0, 0.0])
    for rec in index:
        k = (str(rec["role"]), str(rec["package"]), str(rec["split"]))
        inv[k][0] += 1
        inv[k][1] += int(rec["length"]) / RATE / 60
    lines = [f"{'role':7s} {'package':26s} {'version':22s} {'files':>6s} {'train min':>10s} {'val min':>8s}"]
    for role in ("speech", "noise"):
        pk = SPEECH_PACKAGES if role == "speech" else NOISE_PACKAGES
        tot = [0.0, 0.0]
        for p in pk:
            tr, va = inv[(role, p, "train")], inv[(role, p, "val")]
            tot[0] += tr[1]
            tot[1] += va[1]
            lines.append(f"{role:7s} {p:26s} {versions[p]:22s} {tr[0] + va[0]:6d} {tr[1]:10.1f} {va[1]:8.1f}")
        lines.append(f"{role:7s} {'TOTAL':26s} {'':22s} {'':6s} {tot[0]:10.1f} {tot[1]:8.1f}")
    lines.append("skipped: " + ", ".join(f"{k} x{v}" for k, v in sorted(skipped.items())))
    (audio / "inventory.txt").write_text("\n".join(lines) + "\n")
    manifest = {"rate": RATE, "versions": versions, "excluded_eval_sources": n_excl, "files": index}
    (audio / "index.json").write_text(json.dumps(manifest, indent=0))
    print("\n".join(lines))

    rir_path = data / "rirs.npz"
    if not rir_path.exists():
        bank = make_rirs(args.rirs, args.seed)
        np.savez(data / "rirs.tmp.npz", **bank)
        (data / "rirs.tmp.npz").rename(rir_path)
        print(f"{args.rirs} RIRs -> {rir_path}")


if __name__ == "__main__":
    main()
