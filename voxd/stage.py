"""The stage contract: what every processing stage, built-in or third-party, implements.

A stage type is a class registered through the ``voxd_register_stages`` hook (see :mod:`voxd.hookspecs`).
The chain builder creates one instance per chain entry and drives it through this life cycle::

    stage = Kind(params, name)          # params: a validated Kind.Params instance
    out_fmt = stage.negotiate(in_fmt)   # build time: check the input format, return the output format
    stage.open(ctx)                     # before the first frame: allocate state
    frame = stage.process(frame)        # hot path, once per frame: no I/O, no logging above DEBUG
    stage.reset()                       # after a discontinuity or a reload
    stage.close()                       # at shutdown

``domain`` says whether ``process`` sees time samples ``(channels, hop)`` or one STFT frame
``(channels, bins)``; the chain inserts the shared STFT analysis/synthesis where the domain changes.
``requires``/``provides`` name the side values a stage reads from and writes to ``frame.side``; the
builder refuses a chain where a requirement has no earlier provider.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from voxd.frame import AudioFormat, Domain, Frame
from voxd.geometry import SPEED_OF_SOUND


class StageParams(BaseModel):
    """Base of every stage's ``Params`` model: unknown keys are errors, values are immutable, and no
    float may be NaN or infinite (``.nan`` is valid YAML, and it passes no ``ge``/``le`` test of its own
    intent). Give every number a range (``ge``/``le``): ``tests/test_fuzz_config.py`` checks that the
    schema of every installed stage has one."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class FormatError(Exception):
    """Raised by ``negotiate`` when a stage cannot take the format it is offered (a build-time error)."""


EventSink = Callable[..., None]


@dataclass
class StageContext:
    """What a stage may use outside its frames.

    ``rate``: chain sample rate (Hz); ``positions``: microphone positions float64 ``(channels, 3)`` in
    metres relative to the array centre (row *i* = the stage's input channel *i*), or None when the
    config gives no geometry; ``speed_of_sound``: m/s (``array.speed_of_sound``);
    ``emit(type, pts=..., **fields)`` publishes an event on the bus (only on state changes, never every
    frame); ``pts`` is the chain-rate sample index the event refers to (e.g. ``frame.pts``), which the
    daemon turns into the ``seq`` of the published frame that holds that sample (and ``t_s``, seconds
    since stream start);
    ``log``: the stage's logger.
    """

    rate: int
    positions: np.ndarray | None = None
    speed_of_sound: float = SPEED_OF_SOUND
    emit: EventSink = field(default=lambda *a, **k: None)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("voxd.stage"))
    extra: dict[str, Any] = field(default_factory=dict)


class Stage:
    """Base class for stages. Subclasses set ``kind``, ``Params``, ``domain`` and implement ``process``."""

    kind: ClassVar[str] = ""
    domain: ClassVar[Domain] = Domain.TIME
    Params: ClassVar[type[StageParams]] = StageParams
    #: side keys read from ``frame.side`` (must be provided by an earlier stage)
    requires: ClassVar[tuple[str, ...]] = ()
    #: side keys this stage writes into ``frame.side``
    provides: ClassVar[tuple[str, ...]] = ()
    #: True for stages that use ``ctx.positions`` (e.g. doa, beamform): the chain builder then requires
    #: an ``array`` section whose number of positions equals the channels reaching the stage
    needs_geometry: ClassVar[bool] = False

    @classmethod
    def domain_for(cls, params: StageParams) -> Domain:
        """The domain ``process`` works in with these params (default: :attr:`domain`); a stage whose
        engines differ (``denoise``) overrides it."""
        return cls.domain

    @classmethod
    def required_keys(cls, params: StageParams) -> tuple[str, ...]:
        """Side keys this stage needs with these params (default: :attr:`requires`)."""
        return cls.requires

    @classmethod
    def provided_keys(cls, params: StageParams) -> tuple[str, ...]:
        """Side keys this stage writes with these params (default: :attr:`provides`)."""
        return cls.provides

    def __init__(self, params: StageParams, name: str) -> None:
        self.params = params
        self.name = name
        self.input_format: AudioFormat | None = None
        self.output_format: AudioFormat | None = None

    def negotiate(self, fmt: AudioFormat) -> AudioFormat:
        """Check the input format and return the output format. Default: unchanged.

        Raise :class:`FormatError` with a one-line reason when ``fmt`` is unusable.
        """
        return fmt

    @property
    def delay_samples(self) -> int:
        """Algorithmic delay this stage adds, in samples at the chain rate (0 for most stages)."""
        return 0

    def open(self, ctx: StageContext) -> None:
        """Allocate per-stream state; called once after ``negotiate`` and before the first frame."""

    def process(self, frame: Frame) -> Frame:
        """Return the processed frame. Must not mutate ``frame`` or its arrays."""
        raise NotImplementedError

    def reset(self) -> None:
        """Forget stream state (after a discontinuity or a reload)."""

    def close(self) -> None:
        """Release resources."""

    def stats(self) -> dict[str, Any] | None:
        """A small JSON-able summary for the daemon's ``stats`` topic (``stage_stats.<name>``), covering
        the time since the previous call; None (the default) contributes nothing. Called on the worker
        thread between frames, once per ``output.stats_interval_s``: it may reset its accumulators."""
        return None
