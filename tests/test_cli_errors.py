"""Config mistakes through the real command: one exact ``file:line: path: message`` line, exit 78,
no traceback. One case per class of mistake (the loader's own tests cover the details)."""

from __future__ import annotations

from pathlib import Path

import pytest

CASES = {
    "unknown key": ("chain:\n  - stage: highpass\n    cuttoff_hz: 100\n",
                    "{f}:4: chain.0.cuttoff_hz: unknown key 'cuttoff_hz' (did you mean 'cutoff_hz'?)"),
    "misspelt stage": ("chain:\n  - stage: higpass\n",
                       "{f}:3: chain.0.stage: unknown stage 'higpass' (did you mean 'highpass'?); installed: "
                       "gain, highpass, mix, passthrough_stft, select"),
    "wrong type": ("chain:\n  - {stage: gain, db: loud}\n",
                   "{f}:3: chain.0.db: Input should be a valid number, unable to parse string as a number"),
    "out of range": ("processing:\n  rate: 96000\n",
                     "{f}:3: processing.rate: Input should be less than or equal to 48000"),
    "duplicate key": ("output:\n  format: s16le\n  format: f32le\n",
                      "{f}:4: output.format: duplicate key (first at line 3)"),
    "channel-count mismatch": ("chain:\n  - stage: highpass\n  - stage: select\n    channels: [0, 5]\n",
                               "{f}:4: chain.1: stage 'select' (select) cannot take 4 ch 16000 Hz time: "
                               "channel 5 out of range: the input has 4 channels (0-3)"),
    "cutoff above Nyquist": ("chain:\n  - {stage: highpass, cutoff_hz: 9000}\n",
                             "{f}:3: chain.0: stage 'highpass' (highpass) cannot take 4 ch 16000 Hz time: "
                             "cutoff_hz 9000 must be below Nyquist (8000 Hz)"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_config_mistake_gives_one_exact_line_and_exit_78(case, voxd, recording, tmp_path):
    body, expected = CASES[case]
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"capture: {{type: file, path: {recording}}}\n{body}")
    # only the basic plugin, so that the "installed:" list is fixed whatever other plugins exist
    r = voxd("check", str(cfg), env={"VOXD_DISABLE_PLUGINS": "extra,broken,vad,noise,denoise,array,agc,aec"})
    assert r.returncode == 78
    assert r.stderr.strip() == expected.format(f=cfg)
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_set_override_error_names_the_override(voxd, recording, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"capture: {{type: file, path: {recording}}}\nchain:\n  - {{stage: gain, db: 3}}\n")
    r = voxd("check", str(cfg), "--set", "chain.0.db=loud")
    assert r.returncode == 78
    assert r.stderr.strip() == ("--set chain.0.db=loud: chain.0.db: Input should be a valid number, "
                                "unable to parse string as a number")
    ok = voxd("check", str(cfg), "--set", "chain.0.db=-6", "--set", "output.format=f32le")
    assert ok.returncode == 0, ok.stderr


def test_missing_input_file_is_named(voxd, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("capture: {type: file, path: /nonexistent/rec.wav}\n")
    r = voxd("check", str(cfg))
    assert r.returncode == 78
    assert r.stderr.strip() == f"{cfg}:1: capture.path: /nonexistent/rec.wav: no such file"
    r = voxd("process", "--config", str(cfg), "/nonexistent/in.wav", str(tmp_path / "o.wav"))
    assert r.returncode == 66
    assert r.stderr.strip() == "voxd: /nonexistent/in.wav: no such file"


def test_check_reports_the_built_chain(voxd, recording, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"capture: {{type: file, path: {recording}}}\n"
                   "chain: [{stage: highpass}, {stage: passthrough_stft}, {stage: mix}]\n")
    r = voxd("check", str(cfg))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == (f"{cfg}: ok: 4 ch in, 1 ch out at 16000 Hz; delay 10 ms; "
                                "chain: highpass -> stft -> passthrough_stft -> istft -> mix")


def test_schema_has_every_stage(voxd):
    import json

    r = voxd("schema")
    assert r.returncode == 0
    text = json.dumps(json.loads(r.stdout))
    for needle in ('"const": "highpass"', '"cutoff_hz"', '"const": "select"', '"passthrough_stft"'):
        assert needle in text


def test_config_files_shipped_in_the_repo_are_valid(capsys, monkeypatch):
    """Every config under config/ passes ``voxd check``: the CLI's own entry point, in this process (one
    interpreter for all of them; tests/test_install.py runs the command itself from the wheel)."""
    from voxd.cli import main

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)
    configs = sorted((root / "config").rglob("*.yaml"))
    assert len(configs) >= 10
    for cfg in configs:
        status = main(["check", str(cfg.relative_to(root))])
        out, err = capsys.readouterr()
        assert status == 0, f"{cfg}: {err}"
        assert ": ok: " in out, out
