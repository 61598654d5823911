"""End to end with the real daemon: ``voxd run`` bound to every interface with CURVE keys from
``voxd keygen``, and ``voxd listen`` processes as clients. The allow-listed client records the whole
stream; a client with a key the daemon does not know is refused (exit 69); a client without keys
hears nothing. With ``insecure: true`` instead of keys the daemon starts, with a warning.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import zmq.auth

from tests.conftest import ROOT, make_recording, run_voxd
from voxd.client import Subscriber
from voxd.errors import VoxdError
from voxd.wire import AudioMessage, EventMessage

SECONDS = 1.0


def start_listen(endpoint: str, out: Path, *keys: str) -> subprocess.Popen[str]:
    """``voxd listen ENDPOINT --out OUT [keys]`` in its own process."""
    return subprocess.Popen([sys.executable, "-m", "voxd", "listen", endpoint, "--out", str(out), *keys],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def public_key(cert: Path) -> str:
    return zmq.auth.load_certificate(cert)[0].decode()


def setup(tmp_path: Path, port: int, output: str) -> tuple[Path, np.ndarray]:
    rec = tmp_path / "rec.wav"
    pcm = make_recording(rec, channels=1, seconds=SECONDS)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"capture: {{type: file, path: {rec}, realtime: true}}\n"
                   f"output:\n  endpoints: ['tcp://0.0.0.0:{port}']\n  wait_for_subscriber_s: 20\n{output}")
    return cfg, pcm


def test_curve_daemon_serves_only_the_allow_listed_client(tmp_path: Path, free_port: int) -> None:
    keys = tmp_path / "keys"
    for name in ("server", "asr", "stranger"):
        r = run_voxd("keygen", "--out", str(keys), "--name", name)
        assert r.returncode == 0, r.stderr
    cfg, pcm = setup(tmp_path, free_port, f"  curve:\n    secret_key_file: {keys / 'server.key_secret'}\n"
                                          f"    allowed_clients: [{keys / 'asr.key'}]\n")
    endpoint = f"tcp://127.0.0.1:{free_port}"
    server = ["--server-key", str(keys / "server.key")]
    good = start_listen(endpoint, tmp_path / "good.wav", *server,
                        "--client-key", str(keys / "asr.key_secret"))
    stranger = start_listen(endpoint, tmp_path / "stranger.wav", *server,
                            "--client-key", str(keys / "stranger.key_secret"))
    plain = start_listen(endpoint, tmp_path / "plain.wav")
    try:
        daemon = run_voxd("run", "--config", str(cfg), timeout=60)
        assert daemon.returncode == 0, daemon.stderr
        _, good_err = good.communicate(timeout=30)
        _, stranger_err = stranger.communicate(timeout=30)
        plain.send_signal(signal.SIGTERM)  # it would wait forever: its handshakes keep failing
        _, plain_err = plain.communicate(timeout=30)
    finally:
        for proc in (good, stranger, plain):
            proc.kill()

    # The allowed client got the whole stream, sample for sample.
    assert good.returncode == 0, good_err
    data, rate = sf.read(tmp_path / "good.wav", dtype="int16", always_2d=True)
    assert rate == 16000
    np.testing.assert_array_equal(data, pcm)
    # The stranger was refused, with one line saying why.
    assert stranger.returncode == 69
    assert stranger_err.strip().endswith(f"voxd: {endpoint}: the server refused this client's key (ZAP "
                                         "status 400): its public key is not on the allow-list")
    assert not (tmp_path / "stranger.wav").exists()
    # The client without keys heard nothing and said why.
    assert plain.returncode == 0
    assert f"voxd listen: warning: {endpoint}: security handshake failed: the server probably requires " \
           "CURVE keys" in plain_err
    assert "received 0 frames" in plain_err and not (tmp_path / "plain.wav").exists()
    # The daemon announced its public key and logged the refused one.
    server_public, stranger_public = public_key(keys / "server.key"), public_key(keys / "stranger.key")
    assert f"CURVE on: server public key {server_public}, 1 allowed client key(s)" in daemon.stderr
    refused = f"refused a subscriber with CURVE public key {stranger_public}: not on the allow-list"
    assert refused in daemon.stderr


def test_insecure_daemon_starts_with_a_warning(tmp_path: Path, free_port: int) -> None:
    cfg, pcm = setup(tmp_path, free_port, "  insecure: true\n")
    listener = start_listen(f"tcp://127.0.0.1:{free_port}", tmp_path / "out.wav")
    try:
        daemon = run_voxd("run", "--config", str(cfg), timeout=60)
        assert daemon.returncode == 0, daemon.stderr
        _, err = listener.communicate(timeout=30)
    finally:
        listener.kill()
    assert listener.returncode == 0, err
    data, _ = sf.read(tmp_path / "out.wav", dtype="int16", always_2d=True)
    np.testing.assert_array_equal(data, pcm)
    assert (f"WARNING voxd.publisher: output endpoint tcp://0.0.0.0:{free_port} has no CURVE keys "
            "(output.insecure: true): anyone who can reach it can listen to the audio") in daemon.stderr


def test_a_reload_that_removes_a_client_key_cuts_that_client_off(tmp_path: Path, free_port: int) -> None:
    """Issue 16, class 11: two allow-listed clients are connected and receiving; a reload removes one
    key from ``allowed_clients``. The removed client is cut off at once (ZeroMQ checks keys only at the
    handshake, so the daemon ends every connection and the removed client's reconnection is refused:
    ``recv`` raises, exit 69 in ``voxd listen``); the other one comes back and keeps receiving. A
    reload that only adds a key disturbs nobody."""
    keys = tmp_path / "keys"
    for name in ("server", "a", "b", "c"):
        assert run_voxd("keygen", "--out", str(keys), "--name", name).returncode == 0
    rec = tmp_path / "rec.wav"
    make_recording(rec, channels=1, seconds=2.0)
    cfg = tmp_path / "run.yaml"

    def write(clients: list[str]) -> None:
        allowed = ", ".join(str(keys / f"{c}.key") for c in clients)
        cfg.write_text(f"capture: {{type: file, path: {rec}, realtime: true, loop: true}}\n"
                       f"output:\n  endpoints: ['tcp://127.0.0.1:{free_port}']\n  frame_ms: 20\n"
                       f"  curve:\n    secret_key_file: {keys / 'server.key_secret'}\n"
                       f"    allowed_clients: [{allowed}]\n")

    def client(name: str) -> Subscriber:
        return Subscriber(f"tcp://127.0.0.1:{free_port}", topics=("audio", "event"),
                          server_key=str(keys / "server.key"),
                          client_key_file=str(keys / f"{name}.key_secret"))

    def until(sub: Subscriber, pred, timeout: float = 30) -> list:
        got, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = sub.recv(timeout_ms=100)
            if msg is not None:
                got.append(msg)
                if pred(msg):
                    return got
        daemon.send_signal(signal.SIGTERM)
        raise AssertionError(f"timed out; last: {got[-1:]}; daemon: {daemon.communicate(timeout=20)[1]}")

    write(["a", "b"])
    daemon = subprocess.Popen([sys.executable, "-m", "voxd", "run", "--config", str(cfg)], cwd=ROOT,
                              stderr=subprocess.PIPE, text=True)
    a, b = client("a"), client("b")
    try:
        for sub in (a, b):
            until(sub, lambda m: isinstance(m, AudioMessage))
        write(["a", "b", "c"])  # adding a key: nobody is disconnected
        daemon.send_signal(signal.SIGHUP)
        until(a, lambda m: isinstance(m, EventMessage) and m.type == "reload")
        after_add = until(b, lambda m: isinstance(m, EventMessage) and m.type == "reload")
        assert a.gaps == 0 and b.gaps == 0 and after_add
        write(["a"])  # removing b (and c)
        daemon.send_signal(signal.SIGHUP)
        with pytest.raises(VoxdError) as refused:  # b reads on until it is refused
            until(b, lambda m: False, timeout=30)
        assert refused.value.exit_status == 69 and "refused this client's key" in str(refused.value)
        # a was disconnected too (every connection is), reconnected and receives the stream: the
        # frames it lost meanwhile show as one gap
        last = until(a, lambda m: isinstance(m, AudioMessage) and m.gap > 0)[-1]
        until(a, lambda m: isinstance(m, AudioMessage) and m.seq > last.seq + 10)
        assert daemon.poll() is None
    finally:
        a.close()
        b.close()
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=20)
    assert daemon.returncode == 0, err
    assert "2 client key(s) removed from the allow-list" in err
