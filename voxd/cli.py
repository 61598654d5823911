"""The ``voxd`` command line.

Expected errors print one line each (config errors: ``file:line: path: message``) and exit with a
documented status: 2 bad usage (argparse), 64 bad arguments (e.g. ``process --vad-out`` with a chain
that has no voice activity detector, an unknown name for ``config show``), 65 unreadable audio, 66
missing input, 69 unavailable endpoint/device, 70 a stage failed with ``on_error: fail``, 73 an output
file cannot be written (``keygen`` refuses to overwrite a key), 78 invalid config (also a bad or too open
key file), 130 interrupted, 141 stdout closed (a reader that left early, as in ``voxd schema | head``:
no traceback, the status of a process that SIGPIPE ended). Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import select
import signal
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from voxd import __version__
from voxd.errors import ConfigError, VoxdError

if TYPE_CHECKING:
    from voxd.config import LoadedConfig


def _add_config(p: argparse.ArgumentParser, positional: bool = False) -> None:
    if positional:
        p.add_argument("config_pos", nargs="?", metavar="CONFIG", help="config file (YAML)")
        p.add_argument("--config", "-c", help="config file (YAML)")
    else:
        p.add_argument("--config", "-c", required=True, help="config file (YAML)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                   help="override a config value (YAML syntax), e.g. chain.2.db=6; repeatable")


def _load(args: argparse.Namespace) -> LoadedConfig:
    from voxd.config import load_config

    path = getattr(args, "config", None) or getattr(args, "config_pos", None)
    if not path:
        raise VoxdError("a config file is required (CONFIG or --config)", 64)
    return load_config(path, args.overrides)


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")


def cmd_run(args: argparse.Namespace) -> int:
    # First thing: SIGHUP's default action ends the process (status 129), and `systemctl reload` may
    # come while we start (reading the config, loading models, opening the device). Remember it; the
    # daemon reloads once it runs.
    early_hup = threading.Event()
    signal.signal(signal.SIGHUP, lambda _signum, _frame: early_hup.set())
    from voxd.daemon import Daemon

    loaded = _load(args)
    _setup_logging(loaded.config.log.level)
    return Daemon(loaded, overrides=args.overrides, early_hup=early_hup).run()


def cmd_process(args: argparse.Namespace) -> int:
    from voxd.commands.process import process

    loaded = _load(args)
    _setup_logging(loaded.config.log.level if args.verbose else "warning")
    return process(loaded, args.inputs, out_dir=args.out_dir, vad_out=args.vad_out,
                   progress=sys.stderr.isatty() and not args.quiet)


def cmd_bench(args: argparse.Namespace) -> int:
    from voxd.commands import single_thread_blas

    single_thread_blas()  # first: before anything loads numpy
    from voxd.commands.bench import bench, table

    if args.seconds <= 0:
        raise VoxdError(f"bench: --seconds must be positive, got {args.seconds:g}", 64)
    r = bench(args.config, args.overrides, args.input, args.channels, args.seconds)
    print(json.dumps(r, indent=2) if args.json else table(r))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from voxd.commands.eval import run_eval

    # a bar only on a terminal, never in logs or pipes
    return run_eval(args.config, args.overrides, noisy=args.noisy, clean=args.clean, set_dir=args.set_dir,
                    items=args.items, gate=args.gate, plot=args.plot, strict=args.strict, as_json=args.json,
                    progress=not args.quiet and sys.stderr.isatty())


def cmd_check(args: argparse.Namespace) -> int:
    if not args.json:
        print(_check(args)["summary"])
        return 0
    path = getattr(args, "config", None) or getattr(args, "config_pos", None)
    try:
        report = _check(args)
    except VoxdError as exc:  # the JSON says why, the error lines still go to stderr
        lines = exc.lines if isinstance(exc, ConfigError) else [f"voxd: {exc}"]
        print(json.dumps({"config": path, "ok": False, "exit_status": exc.exit_status, "errors": lines},
                         indent=2))
        raise
    print(json.dumps({"config": report["config"], "ok": True, **{k: v for k, v in report.items()
                                                                   if k not in ("config", "summary")}},
                     indent=2))
    return 0


def _check(args: argparse.Namespace) -> dict[str, object]:
    """Load the config and build its chain; what ``voxd check`` reports (``summary``: the text line)."""
    from voxd.chain import build_chain
    from voxd.sources.file import file_info

    loaded = _load(args)
    cfg = loaded.config
    if cfg.capture.type == "file":
        assert cfg.capture.path is not None  # FileCapture's validator requires one
        try:
            channels = file_info(cfg.capture.path)[1]
        except VoxdError as exc:
            raise ConfigError([loaded.error(("capture", "path"), str(exc))]) from None
    else:
        channels = cfg.capture.out_channels
    chain = build_chain(loaded, channels)
    fmt = chain.out_format
    nodes = [n.name for n in chain.nodes]
    delay_ms = chain.delay_samples / fmt.rate * 1000
    summary = (f"{loaded.path}: ok: {channels} ch in, {fmt.channels} ch out at {fmt.rate} Hz; "
               f"delay {delay_ms:g} ms; chain: {' -> '.join(nodes) or '(empty)'}")
    return {"config": loaded.path, "channels_in": channels, "channels_out": fmt.channels, "rate": fmt.rate,
            "delay_ms": delay_ms, "chain": nodes, "summary": summary}


def cmd_schema(args: argparse.Namespace) -> int:
    from voxd.config import config_json_schema
    from voxd.plugins import load_plugins

    print(json.dumps(config_json_schema(load_plugins()), indent=2))
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from voxd.plugins import load_plugins

    plugins = load_plugins()
    if args.json:
        print(json.dumps([asdict(p) for p in plugins.infos], indent=2))
        return 0
    rows = [("PLUGIN", "VERSION", "STATUS", "STAGES")]
    for p in plugins.infos:
        status = p.status if p.error is None else f"{p.status}: {p.error}"
        rows.append((p.name, p.version, status, ", ".join(p.stages) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}".rstrip())
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from voxd.sources.devices import input_devices, portaudio, table

    with portaudio() as pa:
        devices = input_devices(pa)
    if args.json:
        print(json.dumps([asdict(d) for d in devices], indent=2))
        return 0
    print(table(devices) if devices else "no input devices (is a sound server running? is the user in "
          "the 'audio' group?)")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from voxd.commands import configs

    if args.config_command == "list":
        print(configs.list_text(configs.shipped_configs(), args.json))
    elif args.config_command == "show":
        sys.stdout.write(configs.config_text(args.name))
    else:
        sys.stdout.write(configs.systemd_text(args.config_command, getattr(args, "voxd", None)))
    return 0


def cmd_listen(args: argparse.Namespace) -> int:
    from voxd.commands.listen import listen

    return listen(args.endpoint, args.out, args.seconds, topic=args.topic, quiet=args.quiet,
                  **client_keys(args))


def cmd_status(args: argparse.Namespace) -> int:
    from voxd.commands.status import status

    return status(args.endpoint, args.timeout, sys.stdout, as_json=args.json, **client_keys(args))


def add_client_key_options(p: argparse.ArgumentParser) -> None:
    """``--server-key`` and ``--client-key``, for every command that subscribes to the daemon."""
    p.add_argument("--server-key", metavar="KEY|FILE",
                   help="CURVE: the daemon's public key (Z85, as 'voxd keygen' prints it) or its .key file")
    p.add_argument("--client-key", metavar="FILE",
                   help="CURVE: this client's secret key file (NAME.key_secret from 'voxd keygen', "
                        "mode 600); its public key must be on the daemon's allow-list")


def client_keys(args: argparse.Namespace) -> dict[str, str | None]:
    """The :class:`~voxd.client.Subscriber` keyword arguments from :func:`add_client_key_options`."""
    return {"server_key": args.server_key, "client_key_file": args.client_key}


def cmd_keygen(args: argparse.Namespace) -> int:
    from voxd.security import generate_keypair

    public_path, secret_path, public = generate_keypair(args.out, args.name)
    print(f"public key: {public.decode('ascii')}")
    print(f"wrote {public_path} (public: give it to the other side)")
    print(f"wrote {secret_path} (secret, mode 600: keep it on this machine)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voxd", description="Voice-assistant front-end daemon.")
    parser.add_argument("--version", action="version", version=f"voxd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the daemon: capture, chain, publish over ZeroMQ")
    _add_config(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("process", help="run the chain offline on files (faster than real time)")
    _add_config(p)
    p.add_argument("--out-dir", "-o", help="write OUT_DIR/<input stem>.wav for each input")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.add_argument("--verbose", "-v", action="store_true", help="log at the config's level")
    p.add_argument("--vad-out", metavar="FILE.jsonl",
                   help="also write each input's speech segments, one JSON line per input: "
                        '{"input": IN, "segments": [[start_s, end_s], ...]}; the chain needs a stage that '
                        "provides 'speech' (e.g. vad), else exit 64")
    p.add_argument("inputs", nargs="+", metavar="IN", help="input audio files (or IN OUT without --out-dir)")
    p.set_defaults(func=cmd_process)

    p = sub.add_parser("eval", help="speech quality of the chain and of each stage against clean references")
    _add_config(p)
    p.add_argument("--clean", action="append", default=[], metavar="C.wav",
                   help="clean reference; repeat, paired in order with --noisy")
    p.add_argument("--noisy", action="append", default=[], metavar="N.wav", help="noisy input; repeatable")
    p.add_argument("--set-dir", metavar="DIR",
                   help="a data set folder with meta.jsonl (lines with 'noisy' and 'clean' relative paths)")
    p.add_argument("--items", type=int, metavar="N", help="only the first N items of --set-dir")
    p.add_argument("--gate", default="", metavar="snr=3,pesq=0.5,stoi=0.1,clip=1",
                   help="quality-gate thresholds: output-minus-input gains (SNR dB, PESQ, STOI) and the "
                        "output's clipped samples (%%); defaults as shown")
    p.add_argument("--plot", metavar="DIR", help="write PNG spectrograms and a level/VAD/DOA timeline "
                   "per item (needs matplotlib: the 'plot' extra)")
    p.add_argument("--strict", action="store_true", help="exit 1 when the gate fails (default: 0 either way)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("bench", help="per-stage time, RTF, latency (declared and measured), peak RSS")
    _add_config(p)
    p.add_argument("--input", help="audio file (default: the config's capture file, else white noise)")
    p.add_argument("--channels", type=int, help="channels of the synthetic input (default: the config's)")
    p.add_argument("--seconds", type=float, default=30.0, help="audio to process, looped (default 30)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("listen", help="subscribe to a voxd stream; write WAV or raw PCM to stdout")
    p.add_argument("endpoint", metavar="ENDPOINT", help="e.g. tcp://127.0.0.1:7700")
    p.add_argument("--out", "-o", help="WAV file to write (default: raw PCM to stdout)")
    p.add_argument("--seconds", type=float, help="stop after this much audio")
    p.add_argument("--topic", default="audio", help="audio (default) or audio.<stage> for a debug tap")
    p.add_argument("--quiet", "-q", action="store_true", help="no summary on stderr")
    add_client_key_options(p)
    p.set_defaults(func=cmd_listen)

    p = sub.add_parser("status", help="print the daemon's next stats message (frames, drops, RTF, times)")
    p.add_argument("endpoint", nargs="?", default="tcp://127.0.0.1:7700",
                   help="the daemon's endpoint (default: tcp://127.0.0.1:7700)")
    p.add_argument("--timeout", type=float, default=12.0, metavar="S",
                   help="seconds to wait for a stats message (default 12: two default intervals)")
    p.add_argument("--json", action="store_true", help="print the message as one JSON object")
    add_client_key_options(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("keygen", help="write a CURVE key pair (NAME.key public, NAME.key_secret secret)")
    p.add_argument("--out", "-o", default=".", metavar="DIR",
                   help="directory for the key files (created with mode 700 if missing; default: .)")
    p.add_argument("--name", "-n", default="voxd",
                   help="base name of the files (default: voxd); existing files are never overwritten")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("check", help="validate a config and build its chain (opens no device)")
    _add_config(p, positional=True)
    p.add_argument("--json", action="store_true",
                   help='print one JSON object: {"config", "ok": true, "channels_in", "channels_out", "rate" '
                        '(Hz), "delay_ms", "chain" (the built chain\'s node names, inserted stft/istft '
                        'included)}; when the config is invalid {"config", "ok": false, "exit_status", '
                        '"errors" (the lines also printed on stderr)}')
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("devices", help="list audio input devices (index, name, channels, default rate)")
    p.add_argument("--json", action="store_true",
                   help='print a JSON list of {"index", "name", "max_channels", "default_rate" (Hz), '
                        '"host_api", "is_default"}, [] when there is none')
    p.set_defaults(func=cmd_devices)

    p = sub.add_parser("schema", help="print the config's JSON Schema (with every installed stage)")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("plugins", help="list plugins with their stages, version and status")
    p.add_argument("--json", action="store_true",
                   help='print a JSON list of {"name", "target" (entry point), "version", "status" (ok, '
                        'failed, disabled), "error" (why it failed, else null), "stages"}')
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("config", help="the configs and systemd files shipped with voxd: list, show, unit",
                       description="The configs and systemd files installed with voxd, e.g. "
                       "'voxd config show respeaker-4mic-hat > /etc/voxd/voxd.yaml'.")
    p.set_defaults(func=cmd_config)
    csub = p.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    c = csub.add_parser("list", help="list the shipped configs: name and what each is for")
    c.add_argument("--json", action="store_true",
                   help='print a JSON list of {"name", "description", "path" (the installed file)}')
    c = csub.add_parser("show", help="print a shipped config (YAML) to stdout")
    c.add_argument("name", metavar="NAME", help="a name from 'voxd config list' (e.g. respeaker-4mic-hat)")
    c = csub.add_parser("unit", help="print the systemd unit (voxd.service) to stdout")
    c.add_argument("--voxd", metavar="PATH",
                   help="absolute path of the voxd command for ExecStart= (default: /usr/bin/voxd, e.g. "
                        "a link to VENV/bin/voxd)")
    csub.add_parser("sysusers", help="print the sysusers.d entry (user and group voxd, in group audio)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``voxd`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        try:
            status = int(args.func(args) or 0)
            sys.stdout.flush()  # here, not at exit: a closed pipe must raise where we catch it
            return status
        except ConfigError as exc:
            for line in exc.lines:
                print(_err(line), file=sys.stderr)
            return exc.exit_status
        except VoxdError as exc:
            print(_err(f"voxd: {exc}"), file=sys.stderr)
            return exc.exit_status
        except KeyboardInterrupt:
            return 130
    except BrokenPipeError:
        if not _stdout_closed():
            raise  # some other pipe or socket: a bug, keep its traceback
        from voxd.commands.listen import silence_stdout

        silence_stdout()
        return EXIT_STDOUT_CLOSED


def _err(line: str) -> str:
    """An error line for stderr: with the journal's error priority (``<3>``) when stderr is the journal
    (a systemd service), so that ``journalctl -p err`` finds why the daemon exited."""
    from voxd.logsetup import stderr_is_journal

    return f"<3>{line}" if stderr_is_journal() else line


#: the exit status when the reader of stdout went away (``voxd schema | head``): 128 + SIGPIPE, what a
#: shell reports for a process that SIGPIPE ended
EXIT_STDOUT_CLOSED = 128 + signal.SIGPIPE


def _stdout_closed() -> bool:
    """Whether stdout is a pipe or socket whose reader went away (poll reports POLLERR or POLLHUP)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


if __name__ == "__main__":
    sys.exit(main())
