"""The stage contract: what every processing stage, built-in or third-party, implements.

A stage type is a class registered through the ``voxd_register_stages`` hook (see :mod:`voxd.hookspecs`).
It subclasses ``Stage[P]`` where ``P`` is its parameters model (a :class:`StageParams` subclass), which
also becomes its ``Params`` (what the config loader validates a chain entry with). The chain builder
creates one instance per chain entry and drives it through this life cycle::

    stage = Kind(params, name)          # params: a validated Kind.Params instance (self.params: P)
    out_fmt = stage.accept(in_fmt)      # build time: negotiate() checks the input format and returns
                                        # the output format; both are then stage.input_format/output_format
    stage.open(ctx)                     # before the first frame: allocate state
    frame = stage.process(frame)        # hot path, once per frame: no I/O, no logging above DEBUG
    stage.reset()                       # after a discontinuity or a reload
    stage.close()                       # at shutdown

``domain`` says whether ``process`` sees time samples ``(channels, hop)`` or one STFT frame
``(channels, bins)``; the chain inserts the shared STFT analysis/synthesis where the domain changes.
``requires``/``provides`` name the side values (:mod:`voxd.side`) a stage reads from and writes to
``frame.side``; the builder refuses a chain where a requirement has no earlier provider.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar, get_args, get_origin

import numpy as np
from pydantic import BaseModel, ConfigDict

from voxd.errors import FormatError
from voxd.frame import AudioFormat, Domain, Frame
from voxd.geometry import SPEED_OF_SOUND

__all__ = ["EventSink", "FormatError", "Stage", "StageContext", "StageParams", "discard_events",
           "distinct_indices", "readable_file"]


class StageParams(BaseModel):
    """Base of every stage's ``Params`` model: unknown keys are errors, values are immutable, and no
    float may be NaN or infinite (``.nan`` is valid YAML, and it passes no ``ge``/``le`` test of its own
    intent). Give every number a range (``ge``/``le``): ``tests/test_fuzz_config.py`` checks that the
    schema of every installed stage has one."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def readable_file(path: str, what: str) -> str:
    """``path`` if it is a readable file; else ValueError ``<what> '<path>' does not exist`` (or ``is not
    a readable file``), for a Params validator (a model file, say)."""
    if not (os.path.isfile(path) and os.access(path, os.R_OK)):
        why = "does not exist" if not os.path.exists(path) else "is not a readable file"
        raise ValueError(f"{what} {path!r} {why}")
    return path


def distinct_indices(v: list[int] | None) -> list[int] | None:
    """``v`` unless it repeats a channel index (ValueError), for a Params validator of ``channels``."""
    if v is not None and len(set(v)) != len(v):
        raise ValueError(f"channels must be distinct channel indices, got {v}")
    return v


#: ``emit(type, pts=..., **fields)``: publishes an event (see :class:`StageContext`).
EventSink = Callable[..., None]


def discard_events(*_args: Any, **_fields: Any) -> None:
    """The ``emit`` of a context without an event bus: events go nowhere."""


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
    emit: EventSink = discard_events
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("voxd.stage"))


#: The parameters model of a stage type.
P = TypeVar("P", bound=StageParams)


class Stage(Generic[P]):
    """Base class for stages: ``class MyStage(Stage[MyParams])``; set ``kind`` and ``domain`` and
    implement ``process``. ``Params`` is taken from the type argument (set it only to override)."""

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

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "Params" in cls.__dict__:
            return
        for base in cls.__dict__.get("__orig_bases__", ()):
            origin = get_origin(base)
            if isinstance(origin, type) and issubclass(origin, Stage):
                (arg,) = get_args(base)
                if isinstance(arg, type) and issubclass(arg, StageParams):
                    cls.Params = arg

    @classmethod
    def domain_for(cls, params: P) -> Domain:
        """The domain ``process`` works in with these params (default: :attr:`domain`); a stage whose
        engines differ (``denoise``) overrides it."""
        return cls.domain

    @classmethod
    def required_keys(cls, params: P) -> tuple[str, ...]:
        """Side keys this stage needs with these params (default: :attr:`requires`)."""
        return cls.requires

    @classmethod
    def provided_keys(cls, params: P) -> tuple[str, ...]:
        """Side keys this stage writes with these params (default: :attr:`provides`)."""
        return cls.provides

    def __init__(self, params: P, name: str) -> None:
        self.params: P = params
        self.name = name
        self._formats: tuple[AudioFormat, AudioFormat] | None = None

    def accept(self, fmt: AudioFormat) -> AudioFormat:
        """Build time (the chain builder calls it once): :meth:`negotiate` ``fmt``, remember the input and
        the output format (:attr:`input_format`, :attr:`output_format`) and return the output format.
        Raises :class:`FormatError` as ``negotiate`` does."""
        out = self.negotiate(fmt)
        self._formats = (fmt, out)
        return out

    @property
    def input_format(self) -> AudioFormat:
        """The format this stage was given at build time (valid from :meth:`open` on)."""
        return self._negotiated()[0]

    @property
    def output_format(self) -> AudioFormat:
        """The format this stage said it produces (valid from :meth:`open` on)."""
        return self._negotiated()[1]

    def _negotiated(self) -> tuple[AudioFormat, AudioFormat]:
        if self._formats is None:
            raise RuntimeError(f"stage '{self.name}' ({self.kind}): its formats are read before the "
                               "chain builder negotiated them")
        return self._formats

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
