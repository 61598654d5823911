"""Transcribe a voxd stream utterance by utterance with PocketSphinx (offline, bundled US English model).

    python examples/asr_pocketsphinx.py [--endpoint tcp://127.0.0.1:7700] [--json]
                                        [--server-key KEY --client-key FILE] [--model-dir DIR]

One line per utterance (start s, end s, text); see examples/README.md and asr_cli.py.
"""

from __future__ import annotations

import argparse
import sys

from asr_cli import run
from recognizers import PocketSphinx, Recognizer


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model-dir", help="a PocketSphinx model directory (en-us/, en-us.lm.bin, "
                    "cmudict-en-us.dict); default: the one the pocketsphinx package bundles")


def make_recognizer(args: argparse.Namespace) -> Recognizer:
    return PocketSphinx(model_dir=args.model_dir)


def main(argv: list[str] | None = None) -> int:
    return run(argv, prog="asr_pocketsphinx", description=__doc__.splitlines()[0],
               add_arguments=add_arguments, make_recognizer=make_recognizer)


if __name__ == "__main__":
    sys.exit(main())
