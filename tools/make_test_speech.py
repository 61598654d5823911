#!/usr/bin/env python3
"""Build the clean-speech test fixture ``tests/data/speech/allison-congrats-10s.flac`` from Debian audio.

Ten seconds of continuous read speech (one woman, Asterisk's English prompt ``demo-congrats``,
recorded by Allison Smith, CC BY-SA 3.0), with every pause longer than ``MAX_PAUSE_S`` shortened to
that length so that speech is present from the first frame to the last, as the noise-tracking tests
need (a device that starts while someone talks). See ``tests/data/speech/README.md``.

Usage (needs Debian's archive and apt lists; does not install the package)::

    python3 -m venv /tmp/mkspeech && /tmp/mkspeech/bin/pip install numpy soundfile av
    /tmp/mkspeech/bin/python tools/make_test_speech.py          # download, build, write the FLAC

``--deb-dir DIR`` takes an already downloaded ``.deb`` instead of running ``apt-get download``.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_demo import decode_g722

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "data" / "speech" / "allison-congrats-10s.flac"

PACKAGE = ("asterisk-core-sounds-en-g722", "1.6.1-1")
PROMPT = "usr/share/asterisk/sounds/en_US_f_Allison/demo-congrats.g722"
PROMPT_SHA256 = "10b6a51a7509ebcff379dd9f9c08e8abf8d1cc9a5c751b13ec7f0ffb91c6fac5"
RATE = 16000  # G.722 decodes to 16 kHz mono
DURATION_S = 10.0
FRAME_S = 0.02  # level analysis frame for pause detection (s)
SILENCE_DB = -45.0  # a 20 ms frame below this (dBFS RMS) counts as pause
MAX_PAUSE_S = 0.12  # pauses are shortened to this: short enough to keep speech "continuous"
FADE_S = 0.005  # raised-cosine fade at each cut (s), so cuts do not click
LEVEL_DBFS = -26.0  # RMS of the active (non-pause) samples


def fetch(deb_dir: Path | None, work: Path) -> Path:
    """Unpack the pinned package into ``work`` (never installed); return the unpacked root."""
    name, version = PACKAGE
    if deb_dir is not None:
        debs = sorted(deb_dir.glob(f"{name}_*.deb"))
        if not debs:
            sys.exit(f"make_test_speech: no {name}_*.deb in {deb_dir}")
        deb = debs[-1]
    else:
        subprocess.run(["apt-get", "download", f"{name}={version}"], cwd=work, check=True)
        deb = next(work.glob(f"{name}_*.deb"))
    root = work / "root"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root


def close_pauses(x: np.ndarray) -> np.ndarray:
    """Shorten every run of quiet 20 ms frames to at most MAX_PAUSE_S (keeping its middle part).

    Leading and trailing quiet is removed entirely. Each cut gets a short fade-out/fade-in.
    """
    hop = int(FRAME_S * RATE)
    n_frames = len(x) // hop
    level = 10 * np.log10(np.mean(x[: n_frames * hop].reshape(n_frames, hop) ** 2, axis=1) + 1e-20)
    quiet = level < SILENCE_DB
    active = np.flatnonzero(~quiet)
    keep = np.zeros(n_frames, bool)
    keep[active[0] : active[-1] + 1] = True
    max_run = round(MAX_PAUSE_S / FRAME_S)
    i = active[0]
    while i <= active[-1]:
        if quiet[i]:
            j = i
            while quiet[j]:
                j += 1
            if j - i > max_run:  # keep max_run frames of the pause, drop the rest
                keep[i + max_run // 2 : j - (max_run - max_run // 2)] = False
            i = j
        else:
            i += 1
    fade = int(FADE_S * RATE)
    ramp = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, fade))
    pieces = []
    start = None
    for f in range(n_frames + 1):
        on = f < n_frames and keep[f]
        if on and start is None:
            start = f
        elif not on and start is not None:
            seg = x[start * hop : f * hop].copy()
            seg[:fade] *= ramp
            seg[-fade:] *= ramp[::-1]
            pieces.append(seg)
            start = None
    return np.concatenate(pieces)


def build(root: Path) -> tuple[np.ndarray, str]:
    """The fixture samples (float64, DURATION_S long) and the source file's sha256."""
    path = root / PROMPT
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != PROMPT_SHA256:
        print(f"make_test_speech: warning: {PROMPT} sha256 {digest} differs from the recipe", file=sys.stderr)
    y = close_pauses(decode_g722(path))
    n = int(DURATION_S * RATE)
    if len(y) < n:
        sys.exit(f"make_test_speech: only {len(y) / RATE:.2f} s of speech after closing pauses")
    y = y[:n]
    fade = int(FADE_S * RATE)
    y[-fade:] *= np.linspace(1.0, 0.0, fade)
    hop = int(FRAME_S * RATE)
    frames = y[: len(y) // hop * hop].reshape(-1, hop)
    active = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-20) >= SILENCE_DB
    y *= 10 ** (LEVEL_DBFS / 20) / np.sqrt(np.mean(frames[active] ** 2))
    return y, digest


def main(argv: list[str] | None = None) -> int:
    import soundfile as sf

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--deb-dir", type=Path, help="take the .deb from here instead of apt-get download")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        y, digest = build(fetch(args.deb_dir, Path(tmp)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pcm = np.clip(np.rint(y * 32767), -32768, 32767).astype(np.int16)
    sf.write(str(args.out), pcm, RATE, format="FLAC", subtype="PCM_16")
    print(f"{args.out}: {len(pcm) / RATE:.2f} s, {args.out.stat().st_size} bytes; "
          f"source {PROMPT} sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
