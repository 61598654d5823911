"""Audio sources: where frames come from (files now; live microphones through the same interface)."""

from __future__ import annotations

from voxd.sources.base import Block, Source
from voxd.sources.file import FileSource

__all__ = ["Block", "FileSource", "Source"]
