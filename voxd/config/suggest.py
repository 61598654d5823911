"""Wording helpers for error messages: did-you-mean hints for misspelt keys and names, value kinds."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate, or ``""`` when none is close."""
    close = difflib.get_close_matches(word, sorted(set(candidates)), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown_key(key: str, candidates: Iterable[str]) -> str:
    """The message for a key the model does not have: ``unknown key 'cuttoff_hz' (did you mean ...)``."""
    return f"unknown key '{key}'{did_you_mean(key, candidates)}"


def kind_of(value: object) -> str:
    """How a YAML user would name the kind of ``value``: ``a mapping``, ``a list``, ``a string``..."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):  # before int: bool is an int subclass
        return "true/false"
    names = {dict: "a mapping", list: "a list", str: "a string", int: "a number", float: "a number"}
    return next((n for t, n in names.items() if isinstance(value, t)), f"a {type(value).__name__}")
