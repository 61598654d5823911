"""Running minimum over a sliding window, tracked in subwindows (Martin 2001).

Keeping every frame of a window of ``D`` frames to take its minimum costs ``D`` comparisons per value
and frame. Martin's subwindow scheme splits the window into ``U`` subwindows of ``V`` frames: the
minimum of each completed subwindow is stored in a ring of ``U`` entries, the current subwindow keeps
a running minimum, and the window minimum is the smaller of the two. Per frame that is two
element-wise minima, plus one ``U``-way minimum every ``V`` frames. The price: the window is really
between ``U*V`` and ``(U+1)*V`` frames long, so a rise of the tracked quantity shows after at most
``(U+1)*V`` frames.
"""

from __future__ import annotations

import numpy as np


class SubwindowMinimum:
    """Minimum of a stream of arrays of one shape over the last ``subwindows * frames_per_sub`` frames.

    ``shape``: the shape of every pushed array (e.g. ``(channels, bins)``); values are float32.
    """

    def __init__(self, shape: tuple[int, ...], subwindows: int, frames_per_sub: int) -> None:
        if subwindows < 1 or frames_per_sub < 1:
            raise ValueError("subwindows and frames_per_sub must be >= 1")
        self.subwindows, self.frames_per_sub = subwindows, frames_per_sub
        self._ring = np.zeros((subwindows, *shape), np.float32)
        self._sub = np.zeros(shape, np.float32)  # running minimum of the current subwindow
        self.minimum = np.zeros(shape, np.float32)  # the window minimum (read it after push)
        self._pos = 0
        self._count = 0

    def start(self, value: np.ndarray) -> None:
        """Restart the window with ``value`` as its whole history (first frame, or after a reset)."""
        self._ring[:] = value
        self._sub[:] = value
        self.minimum[:] = value
        self._pos = self._count = 0

    def push(self, value: np.ndarray) -> np.ndarray:
        """Add one frame; return the window minimum (a view that the next push overwrites)."""
        np.minimum(self._sub, value, out=self._sub)
        np.minimum(self.minimum, value, out=self.minimum)
        self._count += 1
        if self._count == self.frames_per_sub:  # subwindow complete: rotate it into the ring
            self._ring[self._pos] = self._sub
            self._pos = (self._pos + 1) % self.subwindows
            np.minimum(self._ring.min(axis=0), value, out=self.minimum)
            self._sub[:] = value
            self._count = 0
        return self.minimum
