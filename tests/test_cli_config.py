"""What a device owner runs from the installed command: ``voxd config`` (the shipped configs and systemd
files), ``--json`` of ``check``, ``plugins`` and ``devices``, and no traceback when the reader of stdout
goes away (``voxd schema | head``). The same from a wheel in a fresh venv: tests/test_install.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from voxd import cli
from voxd.commands.configs import SHIPPED, SYSTEMD_FILES

ROOT = Path(__file__).resolve().parents[1]
#: configs of the repository that do not ship: they replay demo/, which is not in the wheel (setup.py)
REPO_ONLY = {"demo"}


# --- voxd config ------------------------------------------------------------------------------------


def test_every_config_ships_with_a_description_but_the_demo() -> None:
    assert set(SHIPPED) == {p.stem for p in (ROOT / "config").glob("*.yaml")} - REPO_ONLY
    for name, text in SHIPPED.items():
        assert text and "\n" not in text and len(text) < 140, name


def test_config_list(voxd, tmp_path: Path) -> None:
    r = voxd("config", "list", cwd=tmp_path)
    assert r.returncode == 0 and r.stderr == ""
    names = [line.split()[0] for line in r.stdout.splitlines()[: len(SHIPPED)]]
    assert names == list(SHIPPED)
    assert "respeaker-2mic-hat  ReSpeaker 2-Mics Pi HAT" in r.stdout

    r = voxd("config", "list", "--json", cwd=tmp_path)
    listed = json.loads(r.stdout)
    assert [c["name"] for c in listed] == list(SHIPPED)
    for c in listed:
        assert set(c) == {"name", "description", "path"} and c["description"] == SHIPPED[c["name"]]
        # in this checkout (pip install -e .) the installed files are the repository's own
        assert Path(c["path"]).read_bytes() == (ROOT / "config" / f"{c['name']}.yaml").read_bytes()


def test_config_show_writes_the_file_that_checks(voxd, tmp_path: Path) -> None:
    r = voxd("config", "show", "respeaker-4mic-hat", cwd=tmp_path)
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout == (ROOT / "config" / "respeaker-4mic-hat.yaml").read_text()
    assert voxd("config", "show", "respeaker-4mic-hat.yaml", cwd=tmp_path).stdout == r.stdout
    (tmp_path / "voxd.yaml").write_text(r.stdout)
    check = voxd("check", "voxd.yaml", cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith("voxd.yaml: ok: 4 ch in, 1 ch out at 16000 Hz")


@pytest.mark.parametrize(("name", "hint"), [("respeaker-4mic", " (did you mean 'respeaker-4mic-hat'?)"),
                                            ("respeaker-2mic-hta", " (did you mean 'respeaker-2mic-hat'?)"),
                                            ("demo", "")])
def test_config_show_of_an_unknown_name_is_one_line_exit_64(voxd, name: str, hint: str) -> None:
    r = voxd("config", "show", name)
    assert r.returncode == 64 and r.stdout == ""
    assert r.stderr == (f"voxd: config show: unknown config '{name}'{hint}; shipped configs: "
                        f"{', '.join(SHIPPED)}\n")


def test_config_unit_and_sysusers(voxd) -> None:
    unit = voxd("config", "unit")
    assert unit.returncode == 0
    assert unit.stdout == (ROOT / "systemd" / SYSTEMD_FILES["unit"]).read_text()
    assert "\nExecStart=/usr/bin/voxd run --config /etc/voxd/voxd.yaml\n" in unit.stdout
    moved = voxd("config", "unit", "--voxd", "/opt/voxd/venv/bin/voxd").stdout
    assert "\nExecStart=/opt/voxd/venv/bin/voxd run --config /etc/voxd/voxd.yaml\n" in moved
    assert moved.replace("/opt/voxd/venv/bin/voxd run", "/usr/bin/voxd run") == unit.stdout
    bad = voxd("config", "unit", "--voxd", "venv/bin/voxd")
    assert bad.returncode == 64 and bad.stderr.startswith("voxd: config unit: --voxd must be an absolute")
    sysusers = voxd("config", "sysusers")
    assert sysusers.stdout == (ROOT / "systemd" / SYSTEMD_FILES["sysusers"]).read_text()


# --- --json -----------------------------------------------------------------------------------------


def test_check_json(voxd, tmp_path: Path) -> None:
    r = voxd("check", "--json", "config/respeaker-2mic-hat.yaml")
    assert r.returncode == 0 and r.stderr == ""
    assert json.loads(r.stdout) == {
        "config": "config/respeaker-2mic-hat.yaml", "ok": True, "channels_in": 2, "channels_out": 1,
        "rate": 16000, "delay_ms": 10.0,
        "chain": ["vad", "stft", "noise", "doa", "beamform", "wiener", "istft"]}

    bad = tmp_path / "bad.yaml"
    bad.write_text("capture: {type: pyaudio, channels: 2}\nchain:\n  - {stage: gain, db: loud}\n")
    r = voxd("check", "--json", str(bad))
    assert r.returncode == 78
    line = f"{bad}:3: chain.0.db: Input should be a valid number, unable to parse string as a number"
    assert json.loads(r.stdout) == {"config": str(bad), "ok": False, "exit_status": 78, "errors": [line]}
    assert r.stderr == line + "\n"  # as without --json

    r = voxd("check", "--json", str(tmp_path / "missing.yaml"))
    assert r.returncode == 78 and json.loads(r.stdout)["errors"] == [
        f"{tmp_path / 'missing.yaml'}: cannot read config: No such file or directory"]


def test_plugins_json(voxd) -> None:
    r = voxd("plugins", "--json")
    assert r.returncode == 0
    plugins = {p["name"]: p for p in json.loads(r.stdout)}
    assert {"basic", "vad", "noise", "denoise", "array", "agc", "aec"} <= set(plugins)
    for p in plugins.values():
        assert set(p) == {"name", "target", "version", "status", "error", "stages"}
    assert plugins["array"]["status"] == "ok" and plugins["array"]["error"] is None
    assert {"doa", "beamform"} <= set(plugins["array"]["stages"])


def test_devices_json(voxd, make_virtual_mic) -> None:
    mic = make_virtual_mic(channels=2, rate=16000)
    r = voxd("devices", "--json", env=mic.env)
    assert r.returncode == 0, r.stderr
    devices = json.loads(r.stdout)
    assert isinstance(devices, list) and devices
    for d in devices:
        assert set(d) == {"index", "name", "max_channels", "default_rate", "host_api", "is_default"}
    pulse = [d for d in devices if d["name"] == "pulse"]
    assert pulse and pulse[0]["max_channels"] == 32 and pulse[0]["default_rate"] == 44100.0


# --- a closed stdout --------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [("schema",), ("config", "show", "default"), ("plugins", "--json"),
                                  ("check", "config/default.yaml")])
def test_a_reader_that_left_gets_no_traceback(args: tuple[str, ...]) -> None:
    # the read end is closed before voxd writes (it loads the plugins first): every write fails
    proc = subprocess.Popen([sys.executable, "-m", "voxd", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and err == ""  # 141: what a shell reports for SIGPIPE


def test_schema_into_head_in_a_shell() -> None:
    r = subprocess.run(["bash", "-c", f"set -o pipefail; {sys.executable} -m voxd schema | head -1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert r.stdout == "{\n" and r.stderr == ""
    assert r.returncode == 141  # 96 KB of schema: head leaves after the first line


def test_listen_into_head_stops_quietly(recording: Path, free_port: int, tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port}"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"capture: {{type: file, path: {recording}, realtime: true}}\n"
                   f"output: {{endpoints: ['{endpoint}'], wait_for_subscriber_s: 20}}\n")
    daemon = subprocess.Popen([sys.executable, "-m", "voxd", "run", "--config", str(cfg)], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        r = subprocess.run(["bash", "-c", f"set -o pipefail; {sys.executable} -m voxd listen {endpoint} -q "
                            "| head -c 100 | wc -c"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                           check=False)
        assert r.returncode == 0 and r.stdout.strip() == "100" and r.stderr == ""  # listen: the end, exit 0
        assert daemon.wait(timeout=30) == 0  # the daemon plays its file to the end regardless
    finally:
        daemon.kill()
        assert daemon.stderr is not None
        assert "Traceback" not in daemon.stderr.read()


def test_a_broken_pipe_that_is_not_stdout_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(args: object) -> int:
        raise BrokenPipeError(32, "Broken pipe")  # e.g. a socket of a library: a bug, not a reader that left

    monkeypatch.setattr(cli, "cmd_schema", broken)
    with pytest.raises(BrokenPipeError):
        cli.main(["schema"])
