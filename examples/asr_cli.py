"""The command line shared by ``asr_pocketsphinx.py`` and ``asr_whisper.py``: subscribe to a voxd stream,
cut it into utterances with its speech events, transcribe each one, print one line per utterance.

Output, one line per utterance as soon as it is decoded (stdout, flushed)::

    0.55     2.40  please turn on the kitchen lights        start and end (s since the stream began), text

or, with ``--json``, one JSON object per line: ``start``, ``end`` (s since the stream began), ``text``,
``t`` (capture time of the first sample, Unix s), ``stream``, ``closed_by`` (``speech_end``,
``end_of_stream``, ``stopping``, ``restart``, ``max_length``), ``missing_s`` (audio lost in gaps) and
``decode_s`` (time the recognizer took).

Exit status: 0 after ``end_of_stream`` (a file source ended) or SIGTERM, 130 on Ctrl-C, 69 for an
endpoint that cannot be used, a key refused by the daemon or a recognizer that is not installed, 78
for a bad key file, 64 when only one of the two CURVE keys is given, 2 for bad options; each with one
line on stderr. A daemon that stops (``stopping``)
or restarts does not end the program: it keeps listening for the next one, as a service would.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from recognizers import Recognizer, RecognizerUnavailable
from utterances import Utterance, UtteranceCollector

from voxd.client import Subscriber
from voxd.errors import EX_UNAVAILABLE, VoxdError
from voxd.wire import TOPIC_AUDIO, TOPIC_EVENT, EventMessage

DEFAULT_ENDPOINT = "tcp://127.0.0.1:7700"
# Frames buffered by ZeroMQ while a long utterance is decoded (or the model loads): 10 000 frames of
# 20 ms are 200 s of audio (~7 MB at s16le mono), far more than any decoding takes.
HWM = 10_000
EXIT_INTERRUPTED = 130
QUIET_NOTICE_S = 10.0  # say once that nothing arrives after this long (the daemon may not be running)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def check_host(endpoint: str) -> None:
    """Raise VoxdError (69) when a ``tcp://HOST:PORT`` endpoint names a host that does not resolve.

    ZeroMQ resolves in the background and retries forever without a word: a misspelt host name would
    look exactly like a daemon that is not running yet.
    """
    if not endpoint.startswith("tcp://"):
        return
    address = endpoint[len("tcp://"):].split(";")[-1]  # "tcp://SOURCE;HOST:PORT" connects from SOURCE
    host = address.rpartition(":")[0].strip("[]")
    if not host or host == "*":
        return  # no port or a wildcard: ZeroMQ's own check says what is wrong
    try:
        socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError) as e:
        raise VoxdError(f"endpoint {endpoint}: cannot resolve host {host!r}: {e}", EX_UNAVAILABLE) from None


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The options every example has; a recognizer adds its own to the returned parser."""
    ap = argparse.ArgumentParser(prog=prog, description=description)
    ap.add_argument("--endpoint", default=DEFAULT_ENDPOINT, help=f"voxd stream (default {DEFAULT_ENDPOINT})")
    ap.add_argument("--server-key", help="CURVE: the daemon's public key (Z85) or its .key file")
    ap.add_argument("--client-key", help="CURVE: this client's .key_secret file (voxd keygen)")
    ap.add_argument("--json", action="store_true", help="one JSON object per utterance")
    ap.add_argument("--vad-stage", help="only the speech events of the chain stage of this name")
    ap.add_argument("--max-utterance-s", type=float, default=30.0,  # checked > 0 after parsing
                    help="cut longer utterances into pieces of this length (s; default 30)")
    return ap


def format_line(utt: Utterance, text: str, decode_s: float, as_json: bool) -> str:
    """The output line for one utterance (see the module doc)."""
    if not as_json:
        return f"{utt.start_s:8.2f} {utt.end_s:8.2f}  {text}"
    record: dict[str, Any] = {
        "start": round(utt.start_s, 3), "end": round(utt.end_s, 3), "text": text,
        "t": None if utt.t is None else round(utt.t, 3), "stream": utt.stream, "closed_by": utt.closed_by,
        "missing_s": round(utt.missing / utt.rate, 3), "decode_s": round(decode_s, 3),
    }
    return json.dumps(record)


def transcribe(recognizer: Recognizer, utt: Utterance) -> str:
    """The recognizer's text for ``utt``, resampled to the recognizer's rate when the stream's differs."""
    x = utt.audio
    if utt.rate != recognizer.rate:
        import soxr  # a voxd dependency; only a chain at another rate than 16 kHz needs it

        x = soxr.resample(x, utt.rate, recognizer.rate).astype(np.float32)
    return recognizer.transcribe(x)


def run(argv: Sequence[str] | None, *, prog: str, description: str,
        add_arguments: Callable[[argparse.ArgumentParser], None],
        make_recognizer: Callable[[argparse.Namespace], Recognizer]) -> int:
    """Parse ``argv``, then listen and transcribe until the stream ends; returns the exit status."""
    ap = parser(prog, description)
    add_arguments(ap)
    args = ap.parse_args(argv)
    if args.max_utterance_s <= 0:
        ap.error("--max-utterance-s must be > 0")

    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    try:
        recognizer = make_recognizer(args)
        check_host(args.endpoint)
        # Subscribe first: a bad endpoint fails at once, not after the model has loaded, and the
        # frames that arrive while it loads wait in the socket (HWM) instead of being missed.
        with Subscriber(args.endpoint, topics=(TOPIC_AUDIO, TOPIC_EVENT), hwm=HWM,
                        server_key=args.server_key, client_key_file=args.client_key) as sub:
            recognizer.load()
            print(f"{prog}: {recognizer.name} ready, listening on {args.endpoint}", file=sys.stderr,
                  flush=True)
            return _listen(sub, recognizer, args, prog, lambda: stop)
    except VoxdError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return e.exit_status
    except RecognizerUnavailable as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return EX_UNAVAILABLE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _listen(sub: Subscriber, recognizer: Recognizer, args: argparse.Namespace, prog: str,
            stopped: Callable[[], bool]) -> int:
    collector = UtteranceCollector(max_s=args.max_utterance_s, stage=args.vad_stage)
    warned: str | None = None
    quiet_since: float | None = time.monotonic()  # None once anything arrived or the notice was given
    while not stopped():
        msg = sub.recv(timeout_ms=200)  # short: SIGTERM is noticed within 0.2 s
        if quiet_since is not None and (msg is not None or time.monotonic() - quiet_since > QUIET_NOTICE_S):
            if msg is None:
                print(f"{prog}: nothing from {args.endpoint} in {QUIET_NOTICE_S:.0f} s; still listening "
                      "(is the daemon running, on this endpoint?)", file=sys.stderr, flush=True)
            quiet_since = None
        # a failing handshake (say why nothing arrives) or a malformed message: once per new reason
        if sub.last_error and sub.last_error != warned:
            warned = sub.last_error
            print(f"{prog}: {warned}", file=sys.stderr, flush=True)
        if msg is None:
            continue
        for utt in collector.push(msg):
            t0 = time.perf_counter()
            text = transcribe(recognizer, utt)
            print(format_line(utt, text, time.perf_counter() - t0, args.json), flush=True)
        if isinstance(msg, EventMessage) and msg.type == "end_of_stream":
            return 0
    return 0
