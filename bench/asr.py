"""Word error rate through the two offline recognizers of examples/: the benchmark's ASR half.

    from bench.asr import recognizer, wer          # or: import asr, with bench/ on sys.path
    rec = recognizer("whisper")                    # or "pocketsphinx"; the model loads on first use
    hyps = [rec.transcribe(x) for x in clips]      # float32 (n,) mono 16 kHz
    print(wer(refs, hyps))                         # {"wer": 0.08, "substitutions": 3, ...}

The recognizers are the very objects the live examples use (examples/recognizers.py, loaded from its
path: examples/ is not a package), so the benchmark measures what a user runs. They need the ``asr``
extra (``pip install -e '.[asr]'``).
"""

from __future__ import annotations

import importlib.util
import re
import sys
import unicodedata
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["normalise", "recognizer", "recognizers_module", "wer"]

RECOGNIZERS_PY = Path(__file__).resolve().parents[1] / "examples" / "recognizers.py"
_MODULE_NAME = "voxd_examples_recognizers"  # one module object per process: one model cache


def recognizers_module() -> ModuleType:
    """examples/recognizers.py as a module (imported once per process)."""
    module = sys.modules.get(_MODULE_NAME)
    if module is None:
        spec = importlib.util.spec_from_file_location(_MODULE_NAME, RECOGNIZERS_PY)
        assert spec is not None and spec.loader is not None, RECOGNIZERS_PY
        module = importlib.util.module_from_spec(spec)
        sys.modules[_MODULE_NAME] = module  # before exec: dataclasses and pickling look it up
        spec.loader.exec_module(module)
    return module


def recognizer(name: str, **kwargs: Any) -> Any:
    """The recognizer ``name`` (``pocketsphinx`` or ``whisper``): ``.transcribe(x) -> str`` for float32
    ``(n,)`` mono 16 kHz audio in [-1, 1]; ``kwargs`` go to its constructor (e.g. ``cpu_threads=1``)."""
    return recognizers_module().make(name, **kwargs)


_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'"})
# Anything but letters, digits and apostrophes separates words; hyphenated words become two words.
_NON_WORD = re.compile(r"[^\w']+|_")


def normalise(text: str) -> str:
    """Lowercase words separated by single spaces: punctuation removed, apostrophes inside words kept
    (``It's`` -> ``it's``, as PocketSphinx's dictionary spells it), accents folded (``café`` ->
    ``cafe``). Numbers stay as written: the test texts spell them out."""
    text = unicodedata.normalize("NFKD", text.translate(_APOSTROPHES).lower())
    text = "".join(c for c in text if not unicodedata.combining(c))
    words = (w.strip("'") for w in _NON_WORD.split(text))
    return " ".join(w for w in words if w)


def wer(refs: list[str], hyps: list[str], normalise_text: bool = True) -> dict[str, float | int]:
    """Corpus word error rate of ``hyps`` against ``refs`` (same order and length), with jiwer.

    Returns ``wer`` ((S + D + I) / words), ``substitutions``, ``deletions``, ``insertions``, ``hits``
    and ``words`` (reference words). ``normalise_text``: pass both through :func:`normalise` first.
    A reference with no words counts every hypothesis word as an insertion.
    """
    import jiwer

    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    if normalise_text:
        refs, hyps = [normalise(r) for r in refs], [normalise(h) for h in hyps]
    s = d = i = h = 0
    pairs = [(r, y) for r, y in zip(refs, hyps, strict=True) if r.strip()]
    for r, y in zip(refs, hyps, strict=True):
        if not r.strip():  # jiwer refuses empty references; every word said there is inserted
            i += len(y.split())
    if pairs:
        out = jiwer.process_words([r for r, _ in pairs], [y for _, y in pairs])
        s, d, i, h = out.substitutions, out.deletions, out.insertions + i, out.hits
    words = s + d + h
    return {"wer": (s + d + i) / words if words else float(i > 0), "substitutions": s, "deletions": d,
            "insertions": i, "hits": h, "words": words}
