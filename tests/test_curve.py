"""Securing the bus: CURVE over real sockets, the non-loopback rule, key-file checks and ``voxd keygen``.

A CURVE publisher on ``tcp://127.0.0.1:PORT`` with a ZAP allow-list: the allow-listed client gets every
frame while, at the same time, a client with a key not on the list, a client with no keys and a client
with the wrong server key get nothing at all.
"""

from __future__ import annotations

import importlib.metadata as md
import logging
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import zmq

from tests.conftest import ROOT
from voxd.client import Subscriber
from voxd.commands.listen import listen
from voxd.config import load_config_text
from voxd.errors import EX_CANTCREAT, EX_CONFIG, EX_UNAVAILABLE, EX_USAGE, ConfigError, VoxdError
from voxd.plugins import Plugins, StageRegistry
from voxd.publisher import Publisher
from voxd.security import generate_keypair, is_local_endpoint
from voxd.wire import AudioMessage, float_to_s16

RATE = 16000
QUIET_S = 1.5  # how long a refused client must hear nothing while the allowed one hears everything
WAIT_S = 10.0  # upper bound for things that happen as soon as they can
NO_PLUGINS = Plugins(StageRegistry(), [])  # these configs have no chain: no plugin needs loading
# The CLI tests' configs have no chain: loading no plugin saves seconds per command.
NO_PLUGINS_ENV = {"VOXD_DISABLE_PLUGINS": ",".join(ep.name for ep in md.entry_points(group="voxd"))}
HEAD = "capture: {type: file, path: rec.wav}\n"  # line 1 of every config here; loading opens no file


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, tuple[Path, Path, bytes]]:
    """Key pairs written by keygen: the daemon's, an allowed client's and a client nobody allowed."""
    out = tmp_path / "keys"
    return {name: generate_keypair(out, name) for name in ("server", "client", "stranger")}


def frame(i: int) -> np.ndarray:
    return np.full((1, 320), (i % 100) / 100, dtype=np.float32)


def curve_publisher(endpoint: str, keys: dict[str, tuple[Path, Path, bytes]]) -> Publisher:
    """A CURVE publisher built the way the daemon builds it: from a validated ``output`` section."""
    cfg = (f"output:\n  endpoints: ['{endpoint}']\n  curve:\n"
           f"    secret_key_file: {keys['server'][1]}\n    allowed_clients: [{keys['client'][0]}]\n")
    loaded = load_config_text(HEAD + cfg, "c.yaml", plugins=NO_PLUGINS)
    return Publisher.from_config(loaded.config.output)


def config_lines(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_text(HEAD + text, "c.yaml", plugins=NO_PLUGINS)
    assert info.value.exit_status == EX_CONFIG == 78
    return info.value.lines


# ---------------------------------------------------------------------------------- over the wire


def test_only_the_allow_listed_client_receives(keys: Any, free_port: int, caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger="voxd.publisher")
    endpoint = f"tcp://127.0.0.1:{free_port}"
    server_pub, client_secret, stranger_secret = keys["server"][0], keys["client"][1], keys["stranger"][1]
    with curve_publisher(endpoint, keys) as pub:
        assert pub.curve_public_key == keys["server"][2]
        allowed = Subscriber(endpoint, ("audio",), server_key=server_pub, client_key_file=client_secret)
        refused = {
            # a key pair the daemon does not know: ZAP says no
            "stranger": Subscriber(endpoint, ("audio",), server_key=server_pub,
                                   client_key_file=stranger_secret),
            # no keys at all against a CURVE endpoint
            "plain": Subscriber(endpoint, ("audio",)),
            # an allowed client that trusts the wrong server key: the handshake cannot complete
            "wrong server": Subscriber(endpoint, ("audio",), server_key=keys["stranger"][2],
                                       client_key_file=client_secret),
        }
        try:
            assert pub.wait_for_subscriber(WAIT_S, ["audio"])
            got: dict[str, list[AudioMessage]] = {"allowed": [], **{name: [] for name in refused}}
            errors: dict[str, VoxdError] = {}
            sent = 0
            deadline = time.monotonic() + QUIET_S
            while time.monotonic() < deadline:
                pub.send_audio(frame(sent), seq=sent, pts=320 * sent, t=time.time(), rate=RATE)
                sent += 1
                for name, sub in [("allowed", allowed), *refused.items()]:
                    if name in errors:
                        continue
                    try:
                        while (msg := sub.recv(timeout_ms=0 if name != "allowed" else 5)) is not None:
                            assert isinstance(msg, AudioMessage)
                            got[name].append(msg)
                    except VoxdError as e:
                        errors[name] = e
            while (msg := allowed.recv(timeout_ms=300)) is not None:  # what is still in flight
                assert isinstance(msg, AudioMessage)
                got["allowed"].append(msg)
        finally:
            for sub in [allowed, *refused.values()]:
                sub.close()
    assert sent > 50
    assert [m.seq for m in got["allowed"]] == list(range(sent))
    np.testing.assert_array_equal(got["allowed"][7].pcm_array()[:, 0], float_to_s16(frame(7))[0])
    assert {name: len(got[name]) for name in refused} == dict.fromkeys(refused, 0)
    # The refused key ends the client at once (ZeroMQ never retries a ZAP refusal)...
    assert set(errors) == {"stranger"} and errors["stranger"].exit_status == EX_UNAVAILABLE
    assert str(errors["stranger"]) == (f"{endpoint}: the server refused this client's key (ZAP status "
                                       "400): its public key is not on the allow-list")
    # ...the other two keep failing their handshake, and say so.
    assert refused["plain"].handshake_failures > 0 and refused["wrong server"].handshake_failures > 0
    assert "requires CURVE keys" in (refused["plain"].last_error or "")
    assert "wrong server public key" in (refused["wrong server"].last_error or "")
    # The daemon logs a refused key once, not once per attempt.
    stranger = keys["stranger"][2].decode()
    assert [r.getMessage() for r in caplog.records if "refused" in r.getMessage()] == [
        f"refused a subscriber with CURVE public key {stranger}: not on the allow-list"
    ]


def test_allow_list_can_be_replaced_while_running(keys: Any) -> None:
    with curve_publisher("tcp://127.0.0.1:*", keys) as pub:
        endpoint = pub.endpoints[0]
        pub.set_allowed_clients([keys["stranger"][2]])
        with Subscriber(endpoint, ("audio",), server_key=keys["server"][0],
                        client_key_file=keys["stranger"][1]) as sub:
            assert pub.wait_for_subscriber(WAIT_S, ["audio"])
            pub.send_audio(frame(0), seq=0, pts=0, t=time.time(), rate=RATE)
            assert isinstance(sub.recv(timeout_ms=int(WAIT_S * 1000)), AudioMessage)
    with pytest.raises(ValueError, match="CURVE is off"), Publisher(["tcp://127.0.0.1:*"]) as plain:
        plain.set_allowed_clients([])


def test_listen_with_keys_writes_the_stream(keys: Any, tmp_path: Path, capsys: Any) -> None:
    wav = tmp_path / "out.wav"
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["status"] = listen(endpoint, str(wav), None, server_key=keys["server"][2].decode(),
                                      client_key_file=str(keys["client"][1]))
        except BaseException as e:  # handed to the test thread
            result["error"] = e

    with curve_publisher("tcp://127.0.0.1:*", keys) as pub:
        endpoint = pub.endpoints[0]
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        assert pub.wait_for_subscriber(WAIT_S, ["audio", "event"])
        for i in range(10):
            pub.send_audio(frame(i), seq=i, pts=320 * i, t=time.time(), rate=RATE)
        pub.send_event("end_of_stream", seq=9)
        thread.join(WAIT_S)
    assert not thread.is_alive() and result == {"status": 0}
    data, rate = sf.read(str(wav), dtype="int16", always_2d=True)
    assert rate == RATE and data.shape == (3200, 1)
    assert capsys.readouterr().err.startswith("received 10 frames (0.200 s, 1 ch, 16000 Hz), 0 gaps")


def test_listen_cli_with_a_refused_key_exits_69(keys: Any) -> None:
    with curve_publisher("tcp://127.0.0.1:*", keys) as pub:
        endpoint = pub.endpoints[0]
        r = subprocess.run([sys.executable, "-m", "voxd", "listen", endpoint, "--quiet",
                            "--server-key", str(keys["server"][0]), "--client-key", str(keys["stranger"][1])],
                           capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
    assert r.returncode == 69
    assert r.stderr.strip() == (f"voxd: {endpoint}: the server refused this client's key (ZAP status 400): "
                                "its public key is not on the allow-list")
    assert r.stdout == ""


def test_client_key_mistakes(keys: Any, tmp_path: Path) -> None:
    server_pub, client_secret = keys["server"][0], keys["client"][1]
    with pytest.raises(VoxdError, match="both") as info:
        Subscriber("tcp://127.0.0.1:1", server_key=server_pub)
    assert info.value.exit_status == EX_USAGE
    os.chmod(client_secret, 0o640)
    with pytest.raises(VoxdError) as info:
        Subscriber("tcp://127.0.0.1:1", server_key=server_pub, client_key_file=client_secret)
    assert info.value.exit_status == EX_CONFIG
    assert str(info.value) == (f"{client_secret}: secret key file is accessible by group or others "
                               f"(mode 640); run: chmod 600 {client_secret}")
    missing = tmp_path / "nope.key_secret"
    with pytest.raises(VoxdError, match=f"^{missing}: no such file$"):
        Subscriber("tcp://127.0.0.1:1", server_key=server_pub, client_key_file=missing)
    with pytest.raises(VoxdError, match="not a 40-character Z85 public key"):
        Subscriber("tcp://127.0.0.1:1", server_key="not-a-key", client_key_file=keys["stranger"][1])


# --------------------------------------------------------------------------------- the publisher


def test_publisher_refuses_an_open_endpoint_without_keys(free_port: int, caplog: Any) -> None:
    endpoint = f"tcp://0.0.0.0:{free_port}"
    with pytest.raises(VoxdError) as info:
        Publisher([endpoint])
    assert info.value.exit_status == EX_CONFIG
    assert str(info.value) == (f"output endpoint {endpoint} is not loopback, ipc:// or inproc://: binding "
                               "it needs CURVE keys (output.curve) or output.insecure: true")
    caplog.set_level(logging.WARNING, logger="voxd.publisher")
    with Publisher([endpoint], insecure=True) as pub:
        assert pub.endpoints == [endpoint] and pub.curve_public_key is None
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert caplog.records[0].getMessage() == (f"output endpoint {endpoint} has no CURVE keys "
                                              "(output.insecure: true): anyone who can reach it can listen "
                                              "to the audio")


def test_closing_stops_the_zap_thread(keys: Any, free_port: int) -> None:
    before = threading.active_count()
    secret = zmq.auth.load_certificate(keys["server"][1])[1]
    assert secret is not None
    for _ in range(3):  # a reloading daemon makes one publisher after another
        pub = Publisher(["tcp://127.0.0.1:*"], curve_secret_key=secret, curve_allowed_clients=[])
        assert threading.active_count() == before + 1
        pub.close()
        assert threading.active_count() == before
    # A failed bind must not leave the thread behind either.
    with Publisher([f"tcp://127.0.0.1:{free_port}"]), pytest.raises(VoxdError):
        Publisher([f"tcp://127.0.0.1:{free_port}"], curve_secret_key=secret)
    assert threading.active_count() == before


# ------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("endpoint", "local"),
    [
        ("tcp://127.0.0.1:7700", True),
        ("tcp://127.1.2.3:7700", True),
        ("tcp://localhost:7700", True),
        ("tcp://[::1]:7700", True),
        ("ipc:///run/voxd/audio", True),
        ("inproc://voxd", True),
        ("tcp://0.0.0.0:7700", False),
        ("tcp://*:7700", False),
        ("tcp://[::]:7700", False),
        ("tcp://192.168.1.20:7700", False),
        ("tcp://eth0:7700", False),
        ("tcp://voxd.example.org:7700", False),
    ],
)
def test_which_endpoints_are_local(endpoint: str, local: bool) -> None:
    assert is_local_endpoint(endpoint) is local


def test_open_endpoint_without_keys_is_one_config_line(free_port: int) -> None:
    text = f"output:\n  format: s16le\n  endpoints:\n    - tcp://127.0.0.1:7700\n    - tcp://0.0.0.0:{free_port}\n"
    assert config_lines(text) == [
        f"c.yaml:6: output.endpoints.1: 'tcp://0.0.0.0:{free_port}' is not loopback, ipc:// or inproc://: "
        "binding it needs CURVE keys (output.curve; see 'voxd keygen') or an explicit output.insecure: true"
    ]
    assert config_lines("output: {endpoints: ['tcp://*:7700']}\n") == [
        "c.yaml:2: output.endpoints.0: 'tcp://*:7700' is not loopback, ipc:// or inproc://: binding it "
        "needs CURVE keys (output.curve; see 'voxd keygen') or an explicit output.insecure: true"
    ]
    loaded = load_config_text(HEAD + text + "  insecure: true\n", "c.yaml", plugins=NO_PLUGINS)
    assert loaded.config.output.insecure_endpoints == [f"tcp://0.0.0.0:{free_port}"]


def test_curve_config_resolves_keys(keys: Any, tmp_path: Path) -> None:
    clients = tmp_path / "clients"
    clients.mkdir()
    (clients / "asr.key").write_bytes(keys["client"][0].read_bytes())
    inline = keys["stranger"][2].decode()
    text = (f"output:\n  endpoints: ['tcp://*:7700']\n  curve:\n    secret_key_file: {keys['server'][1]}\n"
            f"    allowed_clients: ['{inline}']\n    allowed_clients_dir: {clients}\n")
    output = load_config_text(HEAD + text, "c.yaml", plugins=NO_PLUGINS).config.output
    assert output.curve is not None and output.insecure_endpoints == []
    assert output.curve.keys.public_key == keys["server"][2]
    assert output.curve.keys.allowed_clients == {keys["client"][2], keys["stranger"][2]}
    assert "secret_key=" not in repr(output.curve.keys)  # the secret never lands in a log line


def test_key_file_mistakes_are_one_line_each(keys: Any, tmp_path: Path) -> None:
    secret = keys["server"][1]
    os.chmod(secret, 0o644)
    garbage = tmp_path / "garbage.key"
    garbage.write_text("hello\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    text = (f"output:\n  endpoints: ['tcp://*:7700']\n  curve:\n    secret_key_file: {secret}\n"
            f"    allowed_clients:\n      - {keys['client'][0]}\n      - {tmp_path}/missing.key\n"
            f"      - {garbage}\n    allowed_clients_dir: {empty}\n")
    assert config_lines(text) == [
        f"c.yaml:5: output.curve.secret_key_file: {secret}: secret key file is accessible by group or others "
        f"(mode 644); run: chmod 600 {secret}",
        f"c.yaml:8: output.curve.allowed_clients.1: {tmp_path}/missing.key: no such file (and not a "
        "40-character Z85 public key)",
        f"c.yaml:9: output.curve.allowed_clients.2: {garbage}: not a ZeroMQ certificate (no public-key line)",
        f"c.yaml:10: output.curve.allowed_clients_dir: {empty}: no public key files (*.key) in it: no client "
        "could connect",
    ]
    public_only = keys["client"][0]
    os.chmod(public_only, 0o600)
    assert config_lines(f"output:\n  curve:\n    secret_key_file: {public_only}\n"
                        f"    allowed_clients: ['{keys['client'][2].decode()}']\n") == [
        f"c.yaml:4: output.curve.secret_key_file: {public_only}: no secret-key in this certificate (a public "
        ".key file? use the .key_secret file)"
    ]
    os.chmod(secret, 0o600)
    assert config_lines(f"output:\n  curve:\n    secret_key_file: {secret}\n") == [
        "c.yaml:3: output.curve.allowed_clients: give allowed_clients or allowed_clients_dir: the public "
        "keys of the clients allowed to subscribe"
    ]


def test_cli_refuses_an_open_endpoint_and_an_open_secret(voxd: Any, recording: Path, keys: Any,
                                                         tmp_path: Path, free_port: int) -> None:
    cfg = tmp_path / "c.yaml"
    head = f"capture: {{type: file, path: {recording}}}\n"
    cfg.write_text(head + f"output: {{endpoints: ['tcp://0.0.0.0:{free_port}']}}\n")
    expected = (f"{cfg}:2: output.endpoints.0: 'tcp://0.0.0.0:{free_port}' is not loopback, ipc:// or "
                "inproc://: binding it needs CURVE keys (output.curve; see 'voxd keygen') or an explicit "
                "output.insecure: true")
    for command in ("check", "run"):
        r = voxd(command, "--config", str(cfg), env=NO_PLUGINS_ENV)
        assert (r.returncode, r.stderr.strip(), r.stdout) == (78, expected, ""), command
    secret = keys["server"][1]
    os.chmod(secret, 0o644)
    cfg.write_text(head + f"output:\n  endpoints: ['tcp://0.0.0.0:{free_port}']\n  curve:\n"
                   f"    secret_key_file: {secret}\n    allowed_clients: [{keys['client'][0]}]\n")
    r = voxd("check", str(cfg), env=NO_PLUGINS_ENV)
    assert r.returncode == 78
    assert r.stderr.strip() == (f"{cfg}:5: output.curve.secret_key_file: {secret}: secret key file is "
                                f"accessible by group or others (mode 644); run: chmod 600 {secret}")
    os.chmod(secret, 0o600)
    assert voxd("check", str(cfg), env=NO_PLUGINS_ENV).returncode == 0
    cfg.write_text(head + f"output: {{endpoints: ['tcp://0.0.0.0:{free_port}'], insecure: true}}\n")
    r = voxd("check", str(cfg), env=NO_PLUGINS_ENV)
    assert r.returncode == 0, r.stderr


# ------------------------------------------------------------------------------------------- keygen


def test_keygen_writes_a_private_pair_and_never_overwrites(voxd: Any, tmp_path: Path) -> None:
    out = tmp_path / "new" / "keys"
    r = voxd("keygen", "--out", str(out), "--name", "server")
    assert r.returncode == 0, r.stderr
    public, secret = out / "server.key", out / "server.key_secret"
    mode = {p: stat.S_IMODE(p.stat().st_mode) for p in (out, public, secret)}
    assert mode == {out: 0o700, public: 0o644, secret: 0o600}
    key, secret_key = zmq.auth.load_certificate(secret)
    assert zmq.auth.load_certificate(public) == (key, None) and secret_key is not None
    assert zmq.curve_public(secret_key) == key
    assert r.stdout.splitlines() == [
        f"public key: {key.decode()}",
        f"wrote {public} (public: give it to the other side)",
        f"wrote {secret} (secret, mode 600: keep it on this machine)",
    ]
    assert sorted(p.name for p in out.iterdir()) == ["server.key", "server.key_secret"]  # no scratch left

    before = secret.read_bytes()
    again = voxd("keygen", "--out", str(out), "--name", "server")
    assert again.returncode == EX_CANTCREAT == 73
    assert again.stderr.strip() == (f"voxd: keygen: {public} already exists; not overwriting it (remove it "
                                    "or choose another --name)")
    assert secret.read_bytes() == before
    public.unlink()  # half a pair left: still no overwrite of the secret
    assert voxd("keygen", "--out", str(out), "--name", "server").returncode == 73
    assert secret.read_bytes() == before and not public.exists()

    bad = voxd("keygen", "--out", str(out), "--name", "../x")
    assert (bad.returncode, bad.stderr.strip()) == (64, "voxd: keygen: --name must be a plain file name, "
                                                        "got '../x'")


def test_keygen_secret_is_never_world_readable_even_with_a_loose_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        _, secret, _ = generate_keypair(tmp_path, "loose")
    finally:
        os.umask(old)
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600


def test_without_curve_support_every_entry_point_says_so(keys: Any, monkeypatch: Any) -> None:
    """A libzmq built without libsodium/tweetnacl: a clear error, never a silently open endpoint."""
    real_has = zmq.has
    monkeypatch.setattr(zmq, "has", lambda feature: feature != "curve" and real_has(feature))
    missing = (f"this libzmq ({zmq.zmq_version()}) has no CURVE support: install a pyzmq wheel (bundles "
               "libzmq with CURVE) or a libzmq built with libsodium")
    text = (f"output:\n  curve:\n    secret_key_file: {keys['server'][1]}\n"
            f"    allowed_clients: [{keys['client'][0]}]\n")
    assert config_lines(text) == [f"c.yaml:3: output.curve: {missing}"]
    secret = zmq.auth.load_certificate(keys["server"][1])[1]
    for make in (lambda: Publisher(["tcp://127.0.0.1:*"], curve_secret_key=secret),
                 lambda: Subscriber("tcp://127.0.0.1:1", server_key=keys["server"][0],
                                    client_key_file=keys["client"][1]),
                 lambda: generate_keypair(keys["server"][0].parent, "more")):
        with pytest.raises(VoxdError) as info:
            make()
        assert (str(info.value), info.value.exit_status) == (missing, EX_UNAVAILABLE)
