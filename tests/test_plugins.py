"""Plugins: an outside distribution adds stages; a broken one is isolated and reported."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf


def write_config(path: Path, recording: Path, chain: str) -> Path:
    path.write_text(f"capture: {{type: file, path: {recording}}}\nchain:\n{chain}")
    return path


def test_plugins_lists_outside_broken_and_builtin(voxd, outside_plugins):
    r = voxd("plugins", env=outside_plugins)
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line for line in r.stdout.splitlines()[1:]}
    assert "1.2.3" in rows["extra"] and " ok " in rows["extra"]
    assert rows["extra"].endswith("energy_gate, invert, needs_speech, reference_tap, sleep")
    assert "failed: ModuleNotFoundError: No module named 'voxd_missing_dependency'" in rows["broken"]
    assert rows["basic"].endswith("gain, highpass, mix, passthrough_stft, select")
    # first-party plugins are listed like outside ones
    assert all(rows[name].split()[2] == "ok" for name in ("vad", "noise", "denoise", "array", "agc"))


def test_outside_stage_runs_in_a_chain_despite_the_broken_plugin(voxd, outside_plugins, recording, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", recording, "  - {stage: invert}\n")
    out = tmp_path / "out.wav"
    r = voxd("process", "--config", str(cfg), str(recording), str(out), env=outside_plugins)
    assert r.returncode == 0, r.stderr
    x, _ = sf.read(recording, dtype="int16")
    y, _ = sf.read(out, dtype="int16")
    # inversion is exact except at -32768, which has no positive twin and clips to 32767
    np.testing.assert_array_equal(y, np.clip(-x.astype(np.int32), -32768, 32767))


def test_unknown_stage_names_the_failed_plugin(voxd, outside_plugins, recording, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", recording, "  - {stage: denoise_broken}\n")
    # first-party plugins other than basic are blocked so that the "installed:" list is fixed
    blocked = "vad,noise,denoise,array,agc,aec"
    r = voxd("check", str(cfg), env={**outside_plugins, "VOXD_DISABLE_PLUGINS": blocked})
    assert r.returncode == 78
    assert r.stderr.strip() == (
        f"{cfg}:3: chain.0.stage: unknown stage 'denoise_broken'; installed: energy_gate, gain, highpass, "
        "invert, mix, needs_speech, passthrough_stft, reference_tap, select, sleep; plugins that failed to "
        "load: broken (ModuleNotFoundError: No module named 'voxd_missing_dependency')"
    )


def test_disabled_plugin_is_blocked(voxd, outside_plugins, recording, tmp_path):
    env = {**outside_plugins, "VOXD_DISABLE_PLUGINS": "extra,broken"}
    r = voxd("plugins", env=env)
    rows = {line.split()[0]: line for line in r.stdout.splitlines()[1:]}
    assert "disabled: blocked by VOXD_DISABLE_PLUGINS" in rows["extra"]
    assert "disabled" in rows["broken"]
    cfg = write_config(tmp_path / "c.yaml", recording, "  - {stage: invert}\n")
    r = voxd("check", str(cfg), env=env)
    assert r.returncode == 78
    assert "unknown stage 'invert'" in r.stderr and "Traceback" not in r.stderr


def test_side_key_order_is_checked_before_audio_flows(voxd, outside_plugins, recording, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", recording,
                       "  - {stage: highpass}\n  - {stage: needs_speech}\n  - {stage: energy_gate}\n")
    r = voxd("check", str(cfg), env=outside_plugins)
    assert r.returncode == 78
    assert r.stderr.strip() == (
        f"{cfg}:4: chain.1: stage 'needs_speech' (needs_speech) requires 'speech', which no earlier stage "
        "provides; stage 'energy_gate' (energy_gate) provides it but comes later (chain.2)"
    )
    cfg = write_config(tmp_path / "c.yaml", recording,
                       "  - {stage: energy_gate}\n  - {stage: needs_speech}\n")
    assert voxd("check", str(cfg), env=outside_plugins).returncode == 0
