"""``python -m voxd``: the same as the ``voxd`` command."""

from __future__ import annotations

import sys

from voxd.cli import main

sys.exit(main())
