"""The ``denoise`` engines as systems of the shared scorer (``../shared/bench/tools/score.py``).

Loaded by the scorer through ``BENCH_EXTRA_SYSTEMS``; registers ``voxd-<engine>`` for every engine of
the ``denoise`` stage: ``voxd process`` with the chain ``mix -> denoise(engine)`` and nothing else, so
that each row is the engine inside voxd (resampling, framing, delay compensation included) and
compares one to one with the scorer's own ``dfn3`` and ``rnnoise`` rows. ``VOXD_ENGINE_SET`` adds
parameters to every engine's entry (YAML flow mapping body, e.g. ``attenuation_limit_db: 12``)::

    BENCH_EXTRA_SYSTEMS=bench/engine_systems.py VOXD_VENV=.venv VOXD_ROOT=. \\
        /tmp/bench-venv/bin/python ../shared/bench/tools/score.py ../shared/bench/dev/mono \\
        --system dfn3 --system rnnoise --system voxd-dfn3 --system voxd-rnnoise \\
        --system voxd-gtcrn --system voxd-voxd --out /tmp/engines-mono.json
"""

from __future__ import annotations

import os
import tempfile

ENGINES = ("voxd", "dfn3", "rnnoise", "gtcrn")
CONFIG = """\
capture: {{type: pyaudio, channels: 1}}
processing: {{rate: 16000, window_ms: 20, hop_ms: 10}}
chain:
  - stage: mix
  - {{stage: denoise, engine: {engine}{extra}}}
"""


def _config(engine: str) -> str:
    extra = os.environ.get("VOXD_ENGINE_SET", "").strip()
    fd, path = tempfile.mkstemp(prefix=f"voxd-{engine}-", suffix=".yaml")
    with os.fdopen(fd, "w") as f:
        f.write(CONFIG.format(engine=engine, extra=f", {extra}" if extra else ""))
    return path


def register(registry: dict) -> None:
    """Add ``voxd-<engine>`` for each engine (called by the scorer's systems module)."""
    from systems import System, _voxd_run  # the scorer's module, importable where this is loaded

    def runner(engine: str):
        def run(in_paths, out_dir, config=None):
            path = _config(engine)
            try:
                return _voxd_run(in_paths, out_dir, path)
            finally:
                os.unlink(path)
        return run

    for engine in ENGINES:
        registry[f"voxd-{engine}"] = System(
            f"voxd-{engine}", runner(engine),
            f"voxd process, chain mix -> denoise (engine {engine}) {os.environ.get('VOXD_ENGINE_SET', '')}")
