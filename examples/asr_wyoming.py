"""Transcribe a voxd stream utterance by utterance with any Wyoming speech-to-text server.

    python examples/asr_wyoming.py --wyoming tcp://127.0.0.1:10300 [--endpoint tcp://127.0.0.1:7700]
                                   [--language en] [--json] [--server-key KEY --client-key FILE]

Each utterance (voxd's speech_start .. speech_end) goes to the server as one Wyoming ``transcribe``
request; one line per utterance (start s, end s, text). The server is e.g. Home Assistant's
``wyoming-faster-whisper``; see examples/README.md and asr_cli.py.
"""

from __future__ import annotations

import argparse
import sys

from asr_cli import run
from recognizers import Recognizer, WyomingAsr


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--wyoming", default="tcp://127.0.0.1:10300", metavar="URI",
                    help="the Wyoming ASR server (tcp://HOST:PORT or unix://PATH; default "
                         "tcp://127.0.0.1:10300)")
    ap.add_argument("--language", default="en", help="language asked of the server (default en)")


def make_recognizer(args: argparse.Namespace) -> Recognizer:
    return WyomingAsr(uri=args.wyoming, language=args.language)


def main(argv: list[str] | None = None) -> int:
    return run(argv, prog="asr_wyoming", description=__doc__.splitlines()[0],
               add_arguments=add_arguments, make_recognizer=make_recognizer)


if __name__ == "__main__":
    sys.exit(main())
