"""The command modules of the ``voxd`` CLI (``process``, ``bench``, ``eval``, ``listen``, ``status``).

Each takes plain arguments (the CLI parses the command line) and returns an exit status or a report;
only :mod:`voxd.cli` imports them: the library (:mod:`voxd.runtime`, :mod:`voxd.daemon`...) never does.
Process-wide settings belong to the command that needs them, done when it runs (never at import).
This package's own import loads nothing heavy: :func:`single_thread_blas` must run before numpy.
"""

from __future__ import annotations

import os

#: the thread-count variables of the BLAS/OpenMP runtimes numpy and onnxruntime may load
BLAS_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def single_thread_blas() -> None:
    """Pin BLAS/OpenMP to one thread (unless the environment already says otherwise), as on a small
    board. Effective only before numpy is first imported: those runtimes read the variables once."""
    for var in BLAS_THREAD_VARS:
        os.environ.setdefault(var, "1")
