#!/usr/bin/env python3
"""Build the bundled demo recording ``demo/respeaker4-kitchen.flac`` from Debian-packaged audio.

A simulated ReSpeaker 4-mic HAT in a kitchen: a woman's voice (Asterisk's English prompts, recorded by
Allison Smith) from one direction, a running tap (Minetest's water ambience) from another, plus
independent microphone self-noise, a DC offset and low-frequency rumble. Free field, far field (plane
waves), no reverberation. See ``demo/README.md`` for the recipe, the geometry and the licences.

Usage (needs network access to Debian's archive and the apt lists; does not install the packages)::

    python3 -m venv /tmp/mkdemo && /tmp/mkdemo/bin/pip install numpy scipy soundfile soxr av
    /tmp/mkdemo/bin/python tools/make_demo.py            # download, build, write demo/*.flac + .json
    /tmp/mkdemo/bin/python tools/make_demo.py --check    # check the committed file against the geometry

``av`` (PyAV) is only needed to decode the G.722 prompts; ``--deb-dir DIR`` takes already downloaded
``.deb`` files instead of running ``apt-get download``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT_FLAC = ROOT / "demo" / "respeaker4-kitchen.flac"

# --- sources: pinned Debian 12 (bookworm) packages and the files taken from them ----------------------
SPEECH_PKG = ("asterisk-core-sounds-en-g722", "1.6.1-1")
NOISE_PKG = ("minetest-data", "5.6.1+dfsg+~1.9.0mt8+dfsg-2")
SPEECH_DIR = "usr/share/asterisk/sounds/en_US_f_Allison"
# prompt file (.g722: raw G.722, 16 kHz mono) -> its words
PROMPTS = {
    "hello-world": "Hello world.",
    "tt-weasels": "Weasels have eaten our phone system.",
    "one-moment-please": "One moment please.",
}
NOISE_DIR = "usr/share/games/minetest/games/minetest_game/mods/env_sounds/sounds"
NOISE_FILES = ("env_sounds_water.1.ogg", "env_sounds_water.2.ogg", "env_sounds_water.3.ogg")  # Vorbis 48k
NOISE_KEEP_S = (1.5, 4.75)  # steady part of each loop
NOISE_XFADE_S = 0.5
SHA256 = {
    "hello-world.g722": "940b3bc4ce7ada71378cb0eb2091a94b16200373a27f3a9a7647d5d069be270c",
    "tt-weasels.g722": "5649c76eff816eba52859dc0de27d0aa478300f67df128e3820a97ebb4b2147a",
    "one-moment-please.g722": "a2561859fbf4b58f00dbfc7659ac60df01bef36f8d8d6892d7796be4f7b39a95",
    "env_sounds_water.1.ogg": "d9cb23c31187446dd64222f602283a32176e9ed2a1561ac26c164437446bf39f",
    "env_sounds_water.2.ogg": "66c4b3dee8afcc8bcac194d0428f249aa30cc6d39d94c00fd8cc24231df43dd7",
    "env_sounds_water.3.ogg": "e2903858aedcf0e020d533c312a0f6d81de156abd4222fcc78f121c163e381c9",
}

# --- the scene ----------------------------------------------------------------------------------------
RATE = 16000
DURATION_S = 8.0
SEED = 20241125
SPEED_OF_SOUND = 343.0  # m/s
MIC_RADIUS = 0.0405  # m
MIC_AZIMUTHS_DEG = (45.0, 135.0, 225.0, 315.0)  # channel order 0..3; x = r cos(az), y = r sin(az), z = 0
SPEECH_AZ_DEG = 30.0
NOISE_AZ_DEG = 250.0
LEAD_S = 0.7  # noise only before the first prompt
GAP_S = 0.6  # pause between prompts
EDGE_S = 0.05  # kept around each prompt's active part
FADE_S = 0.01
SPEECH_ACTIVE_DBFS = -24.0  # RMS of the speech image over the speech-active samples (all channels)
SNR_DB = 5.0  # speech power / (tap + mic self-noise) power over the speech segments, all channels
MIC_NOISE_DBFS = -65.0  # independent white self-noise per channel, RMS
DC_OFFSETS = (0.0040, -0.0030, 0.0055, -0.0020)  # per channel, full scale = 1
RUMBLE_DBFS = -40.0  # RMS of the shared low-frequency rumble (below ~30 Hz)
RUMBLE_CUTOFF_HZ = 30.0
PEAK_LIMIT_DBFS = -3.0


def mic_positions() -> np.ndarray:
    """Microphone positions ``(4, 3)`` in metres, channel order of the file."""
    az = np.deg2rad(MIC_AZIMUTHS_DEG)
    return np.stack([MIC_RADIUS * np.cos(az), MIC_RADIUS * np.sin(az), np.zeros_like(az)], axis=1)


def arrival_delays(azimuth_deg: float) -> np.ndarray:
    """Plane-wave arrival time at each mic relative to the array centre (s); negative = earlier."""
    az = np.deg2rad(azimuth_deg)
    toward_source = np.array([np.cos(az), np.sin(az), 0.0])
    return -(mic_positions() @ toward_source) / SPEED_OF_SOUND


def fractional_delay(x: np.ndarray, delays_s: np.ndarray, rate: int) -> np.ndarray:
    """Delay mono ``x`` by each of ``delays_s`` (may be fractional or negative): ``(len(delays), len(x))``.

    Phase shift in the frequency domain on a zero-padded copy, so nothing wraps around.
    """
    pad = 64
    n = len(x) + 2 * pad
    spec = np.fft.rfft(np.concatenate([np.zeros(pad), x, np.zeros(pad)]))
    freqs = np.fft.rfftfreq(n, 1.0 / rate)
    shifted = np.fft.irfft(spec[None, :] * np.exp(-2j * np.pi * freqs[None, :] * delays_s[:, None]), n=n)
    return shifted[:, pad : pad + len(x)]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch(deb_dir: Path | None, work: Path) -> dict[str, Path]:
    """Extract the pinned packages into ``work`` (never installed); return ``{package: root}``."""
    roots = {}
    for name, version in (SPEECH_PKG, NOISE_PKG):
        if deb_dir is not None:
            debs = sorted(deb_dir.glob(f"{name}_*.deb"))
            if not debs:
                sys.exit(f"make_demo: no {name}_*.deb in {deb_dir}")
            deb = debs[-1]
        else:
            subprocess.run(["apt-get", "download", f"{name}={version}"], cwd=work, check=True)
            deb = next(work.glob(f"{name}_*.deb"))
        got = subprocess.run(
            ["dpkg-deb", "-f", str(deb), "Version"], check=True, capture_output=True, text=True
        ).stdout.strip()
        if got != version:
            print(f"make_demo: warning: {name} is {got}, the recipe pins {version}", file=sys.stderr)
        root = work / name
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        roots[name] = root
    return roots


def check_source(path: Path) -> None:
    digest = sha256(path)
    if digest != SHA256[path.name]:
        print(f"make_demo: warning: {path.name} sha256 {digest} differs from the recipe", file=sys.stderr)


def decode_g722(path: Path) -> np.ndarray:
    """Raw G.722 (16 kHz mono) to float64 in [-1, 1)."""
    import av  # only the generator needs PyAV

    with av.open(str(path), format="g722") as container:
        stream = container.streams.audio[0]
        assert stream.rate == RATE, stream.rate
        pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(stream)])
    return pcm.astype(np.float64) / 32768.0


def trim(x: np.ndarray) -> np.ndarray:
    """Keep the active part (20 ms RMS above -40 dBFS) plus EDGE_S each side, with short fades."""
    win = int(0.02 * RATE)
    rms = np.sqrt(np.convolve(x**2, np.ones(win) / win, mode="same"))
    active = np.flatnonzero(rms > 10 ** (-40 / 20))
    edge = int(EDGE_S * RATE)
    y = x[max(active[0] - edge, 0) : min(active[-1] + edge, len(x))].copy()
    fade = int(FADE_S * RATE)
    ramp = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, fade))
    y[:fade] *= ramp
    y[-fade:] *= ramp[::-1]
    return y


def build_speech(root: Path) -> tuple[np.ndarray, list[dict]]:
    """The dry speech track (DURATION_S long) and where each prompt lies in it."""
    n = int(DURATION_S * RATE)
    track = np.zeros(n)
    segments = []
    pos = int(LEAD_S * RATE)
    for prompt in PROMPTS:
        path = root / SPEECH_DIR / f"{prompt}.g722"
        check_source(path)
        y = trim(decode_g722(path))
        track[pos : pos + len(y)] = y
        segments.append(
            {
                "prompt": prompt,
                "text": PROMPTS[prompt],
                "start_s": round(pos / RATE, 4),
                "end_s": round((pos + len(y)) / RATE, 4),
            }
        )
        pos += len(y) + int(GAP_S * RATE)
    if pos - int(GAP_S * RATE) > n - int(0.3 * RATE):
        sys.exit("make_demo: prompts do not fit in the duration")
    return track, segments


def build_noise(root: Path) -> np.ndarray:
    """The dry tap noise, DURATION_S long at 16 kHz.

    Each water loop fades in and out over its first and last ~1.5 s (the game overlaps them), so the
    steady middle of each (NOISE_KEEP_S) is kept and the pieces are joined by equal-power crossfades.
    """
    import soundfile as sf
    import soxr

    pieces = []
    for name in NOISE_FILES:
        path = root / NOISE_DIR / name
        check_source(path)
        x, rate = sf.read(str(path), dtype="float64", always_2d=True)
        y = soxr.resample(x.mean(axis=1), rate, RATE, quality="VHQ")
        pieces.append(y[int(NOISE_KEEP_S[0] * RATE) : int(NOISE_KEEP_S[1] * RATE)])
    xfade = int(NOISE_XFADE_S * RATE)
    t = np.linspace(0.0, np.pi / 2, xfade)
    joined = pieces[0]
    for b in pieces[1:]:
        joined = np.concatenate(
            [joined[:-xfade], joined[-xfade:] * np.cos(t) + b[:xfade] * np.sin(t), b[xfade:]]
        )
    n = int(DURATION_S * RATE)
    if len(joined) < n:
        sys.exit("make_demo: noise too short")
    return joined[:n] - joined[:n].mean()


def _versions() -> dict[str, str]:
    import av
    import scipy
    import soundfile
    import soxr

    return {
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "soxr": soxr.__version__,
        "av": av.__version__,
        "soundfile": soundfile.__version__,
        "libsndfile": soundfile.__libsndfile_version__,
    }


def db(x: float) -> float:
    return float(20 * np.log10(max(x, 1e-12)))


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x))))


def build(roots: dict[str, Path]) -> tuple[np.ndarray, dict]:
    from scipy import signal

    rng = np.random.default_rng(SEED)
    dry_speech, segments = build_speech(roots[SPEECH_PKG[0]])
    dry_noise = build_noise(roots[NOISE_PKG[0]])
    n = len(dry_speech)
    mask = np.zeros(n, dtype=bool)
    for seg in segments:
        mask[int(seg["start_s"] * RATE) : int(seg["end_s"] * RATE)] = True

    speech = fractional_delay(dry_speech, arrival_delays(SPEECH_AZ_DEG), RATE)
    noise = fractional_delay(dry_noise, arrival_delays(NOISE_AZ_DEG), RATE)
    speech *= 10 ** (SPEECH_ACTIVE_DBFS / 20) / rms(speech[:, mask])
    mic_noise = rng.standard_normal((4, n)) * 10 ** (MIC_NOISE_DBFS / 20)
    noise_power = 10 ** ((SPEECH_ACTIVE_DBFS - SNR_DB) / 10) - rms(mic_noise[:, mask]) ** 2
    noise *= np.sqrt(noise_power) / rms(noise[:, mask])
    sos = signal.butter(4, RUMBLE_CUTOFF_HZ, btype="low", fs=RATE, output="sos")
    rumble = signal.sosfilt(sos, rng.standard_normal(n + RATE))[RATE:]  # skip the filter's start-up
    rumble *= 10 ** (RUMBLE_DBFS / 20) / rms(rumble)
    mix = speech + noise + mic_noise + rumble[None, :] + np.asarray(DC_OFFSETS)[:, None]

    peak = float(np.abs(mix).max())
    limit = 10 ** ((PEAK_LIMIT_DBFS - 1.0) / 20)  # keep 1 dB below the limit
    gain = min(1.0, limit / peak)
    mix *= gain
    snr = 10 * np.log10(rms(speech[:, mask]) ** 2 / rms((noise + mic_noise)[:, mask]) ** 2)
    meta = {
        "file": OUT_FLAC.name,
        "rate": RATE,
        "channels": 4,
        "duration_s": DURATION_S,
        "subtype": "PCM_16",
        "array": {
            "preset": "respeaker-4mic-hat",
            "radius_m": MIC_RADIUS,
            "mic_azimuths_deg": list(MIC_AZIMUTHS_DEG),
            "positions_m": [[round(float(v), 6) for v in p] for p in mic_positions()],
            "speed_of_sound_m_s": SPEED_OF_SOUND,
        },
        "speech": {
            "azimuth_deg": SPEECH_AZ_DEG,
            "package": f"{SPEECH_PKG[0]} {SPEECH_PKG[1]}",
            "segments": segments,
        },
        "noise": {
            "azimuth_deg": NOISE_AZ_DEG,
            "package": f"{NOISE_PKG[0]} {NOISE_PKG[1]}",
            "files": list(NOISE_FILES),
        },
        "levels": {
            "gain_applied_db": round(db(gain), 2),
            "snr_db": round(float(snr), 2),
            "speech_active_rms_dbfs": round(db(rms(gain * speech[:, mask])), 2),
            "noise_rms_dbfs": round(db(rms(gain * noise)), 2),
            "mic_noise_rms_dbfs": round(db(rms(gain * mic_noise)), 2),
            "rumble_rms_dbfs": round(db(gain * rms(rumble)), 2),
            "dc_offsets": [round(gain * d, 5) for d in DC_OFFSETS],
            "peak_dbfs": round(db(float(np.abs(mix).max())), 2),
        },
        "seed": SEED,
        "generator": _versions(),
    }
    return mix, meta


def _masked_phat(spec: np.ndarray, mask: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
    """PHAT-weighted cross-spectra ``X_j X_i*`` summed over the time-frequency bins in ``mask``."""
    out = {}
    for i in range(spec.shape[0]):
        for j in range(i + 1, spec.shape[0]):
            cross = spec[j] * np.conj(spec[i])
            out[(i, j)] = (cross / (np.abs(cross) + 1e-12) * mask).sum(axis=1)
    return out


def _lag(cross: np.ndarray, nfft: int, max_lag: float, interp: int = 64) -> float:
    """Lag (samples) at the peak of the interpolated generalized cross-correlation."""
    cc = np.fft.irfft(cross, nfft * interp)
    span = int(np.ceil(max_lag * interp))
    return (int(np.argmax(np.concatenate([cc[-span:], cc[: span + 1]]))) - span) / interp


def _speech_cross_spectra(spec: np.ndarray, in_speech: np.ndarray, band: np.ndarray):
    """Cross-spectra of the speech's relative transfer function, with the tap projected out.

    Per frequency bin, the principal generalized eigenvector ``v`` of (speech-frame covariance,
    non-speech-frame covariance) gives the speech steering vector as ``R_noise v`` (the GEV/ MaxSNR
    estimate); its phase differences between mics are the inter-mic delays of the speech alone.
    """
    from scipy import linalg

    channels, bins, _ = spec.shape
    steer = np.zeros((channels, bins), dtype=complex)
    for k in np.flatnonzero(band):
        xs, xn = spec[:, k, in_speech], spec[:, k, ~in_speech]
        r_s = xs @ xs.conj().T / xs.shape[1]
        r_n = xn @ xn.conj().T / xn.shape[1]
        r_n += 1e-6 * np.real(np.trace(r_n)) / channels * np.eye(channels)
        _, vecs = linalg.eigh(r_s, r_n)
        steer[:, k] = r_n @ vecs[:, -1]
    out = {}
    for i in range(channels):
        for j in range(i + 1, channels):
            cross = steer[j] * np.conj(steer[i])
            out[(i, j)] = cross / (np.abs(cross) + 1e-30) * band
    return out


def check(path: Path) -> int:
    """Load the FLAC, print its levels, and compare measured inter-mic delays with the geometry.

    Per mic pair, a generalized cross-correlation on STFT bins from 200 Hz to 3 kHz (below spatial
    aliasing of the 57 mm pairs), peak interpolated to 1/64 sample: the tap's delays by GCC-PHAT over
    the frames outside the speech segments (the tap alone); the speech's from its steering vector
    estimated with the tap projected out (see ``_speech_cross_spectra``), since at 5 dB SNR the broadband
    tap dominates most bins even during speech. Then an SRP-PHAT azimuth scan over the same spectra.
    Exit status 1 when a delay is off by more than 0.25 samples or an azimuth by more than 3 degrees.
    """
    import soundfile as sf
    from scipy import signal

    x, rate = sf.read(str(path), dtype="float64", always_2d=True)
    x = x.T
    info = sf.info(str(path))
    print(
        f"{path.name}: {info.format}/{info.subtype}, {x.shape[0]} ch, {rate} Hz, {x.shape[1]} samples "
        f"({x.shape[1] / rate:.2f} s), {path.stat().st_size} bytes"
    )
    for ch in range(x.shape[0]):
        print(
            f"  ch{ch}: peak {db(np.abs(x[ch]).max()):6.2f} dBFS  rms {db(rms(x[ch])):6.2f} dBFS  "
            f"mean {x[ch].mean():+.5f}"
        )
    meta = json.loads(path.with_suffix(".json").read_text())
    nfft = 512
    freqs, times, spec = signal.stft(x, rate, nperseg=nfft, noverlap=nfft * 3 // 4)
    in_speech = np.zeros(len(times), dtype=bool)
    for seg in meta["speech"]["segments"]:
        in_speech |= (times >= seg["start_s"]) & (times <= seg["end_s"])
    band = (freqs >= 200) & (freqs <= 3000)
    tap_mask = band[:, None] & ~in_speech[None, :] & (times > 0.1)[None, :]
    max_lag = 2 * MIC_RADIUS / SPEED_OF_SOUND * rate + 1
    grid = np.arange(0.0, 360.0, 0.5)
    ok = True
    for label, az, crosses in (
        ("tap, GCC-PHAT on non-speech frames", NOISE_AZ_DEG, _masked_phat(spec, tap_mask)),
        ("speech, GCC on its steering vector", SPEECH_AZ_DEG, _speech_cross_spectra(spec, in_speech, band)),
    ):
        tau = arrival_delays(az) * rate
        print(f"  {label} (source at {az:g} deg); lag of mic j behind mic i, samples, expected/measured:")
        rows = []
        for (i, j), cross in crosses.items():
            want, got = tau[j] - tau[i], _lag(cross, nfft, max_lag)
            ok &= abs(got - want) <= 0.25
            rows.append(f"{i}-{j} {want:+.2f}/{got:+.2f}")
        print("    " + "   ".join(rows))
        srp = np.zeros(len(grid))
        for (i, j), cross in crosses.items():
            for k, g in enumerate(grid):
                t = arrival_delays(g)
                srp[k] += np.real(np.sum(cross * np.exp(2j * np.pi * freqs * (t[j] - t[i]))))
        est = float(grid[int(np.argmax(srp))])
        err = abs((est - az + 180) % 360 - 180)
        ok &= err <= 3
        print(f"    SRP-PHAT azimuth: {est:g} deg (error {err:g} deg)")
    print("check:", "ok" if ok else "FAILED")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deb-dir", type=Path, help="use these downloaded .deb files")
    parser.add_argument("--out", type=Path, default=OUT_FLAC, help=f"output FLAC (default {OUT_FLAC})")
    parser.add_argument("--check", action="store_true", help="only check an existing file")
    args = parser.parse_args(argv)
    if args.check:
        return check(args.out)

    import soundfile as sf

    with tempfile.TemporaryDirectory(prefix="voxd-demo-") as tmp:
        roots = fetch(args.deb_dir, Path(tmp))
        mix, meta = build(roots)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pcm = np.clip(np.round(mix * 32768.0), -32768, 32767).astype(np.int16)
    sf.write(str(args.out), pcm.T, RATE, format="FLAC", subtype="PCM_16")
    args.out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta["levels"]))
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes), sha256 {sha256(args.out)}")
    return check(args.out)


if __name__ == "__main__":
    sys.exit(main())
