"""voxd: a voice-assistant front-end daemon (multichannel capture -> plugin chain -> ZeroMQ)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("voxd")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
