"""The chain: stages in config order, with the shared STFT inserted where the domain changes.

:func:`build_chain` checks everything that can be checked before audio flows — each stage's format
(``negotiate``), side-value order (``requires`` after ``provides``), the array geometry of stages that
need it (``needs_geometry``: one position per input channel), debug tap names — and reports
every problem as a config error pointing at the chain entry. :class:`Chain` then runs one hop-sized
frame at a time through its nodes; a run of consecutive spectral stages shares one analysis and one
synthesis, so it adds ``n_fft - hop`` samples of delay however many stages it has.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from voxd.errors import ConfigError, FormatError, StageError
from voxd.frame import AudioFormat, Domain, Flags, Frame, finite_within
from voxd.geometry import SPEED_OF_SOUND
from voxd.side import AEC_REFERENCE
from voxd.stage import EventSink, Stage, StageContext, discard_events
from voxd.stft import StftAnalysis, StftSynthesis

if TYPE_CHECKING:
    from voxd.config import LoadedConfig
    from voxd.config.model import StageSpec

log = logging.getLogger("voxd.chain")

#: ``emit(type, pts=..., **fields)``: where a chain's stages send their events (the stage API's sink).
Emit = EventSink
TIMING_WINDOW = 2048  # per-node ring of recent frame times, for p50/p99
#: A stage output whose sum of squares exceeds this square is checked value by value for NaN/inf (the
#: fast test cannot tell a huge value from an infinite one); far above any real spectrum or signal.
OUTPUT_CHECK = 1e15


class Node:
    """One step of a running chain: a stage, or the shared STFT analysis/synthesis."""

    name: str = ""
    kind: str = ""
    in_format: AudioFormat
    out_format: AudioFormat

    def __init__(self) -> None:
        self.times_ns = np.zeros(TIMING_WINDOW, np.int64)
        self.count = 0

    @property
    def delay_samples(self) -> int:
        """Algorithmic delay this node adds, samples at the chain rate."""
        return 0

    def process(self, frame: Frame) -> Frame:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget stream state."""

    def close(self) -> None:
        """Release resources."""

    def timing_us(self) -> tuple[float, float]:
        """(p50, p99) of the recent per-frame times in microseconds."""
        n = min(self.count, self.times_ns.size)
        if n == 0:
            return (0.0, 0.0)
        p50, p99 = np.percentile(self.times_ns[:n], [50, 99]) / 1000.0
        return (float(p50), float(p99))


class AnalysisNode(Node):
    """Time frame ``(C, hop)`` -> spectral frame ``(C, bins)``."""

    kind = "stft"

    def __init__(self, fmt: AudioFormat, n_fft: int) -> None:
        super().__init__()
        self.name = "stft"
        self.in_format = fmt
        self.out_format = AudioFormat(fmt.rate, fmt.channels, fmt.frame, Domain.SPECTRAL, n_fft)
        self.stft = StftAnalysis(fmt.channels, n_fft, fmt.frame)

    def process(self, frame: Frame) -> Frame:
        assert frame.samples is not None
        (spec,) = self.stft.push(frame.samples)  # the chain feeds exactly one hop per frame
        return frame.with_spec(spec)

    def reset(self) -> None:
        self.stft.reset()


class SynthesisNode(Node):
    """Spectral frame ``(C, bins)`` -> time frame ``(C, hop)``."""

    kind = "istft"

    def __init__(self, fmt: AudioFormat) -> None:
        super().__init__()
        self.name = "istft"
        self.in_format = fmt
        self.out_format = AudioFormat(fmt.rate, fmt.channels, fmt.frame, Domain.TIME)
        self.stft = StftSynthesis(fmt.channels, fmt.n_fft, fmt.frame)

    def process(self, frame: Frame) -> Frame:
        assert frame.spec is not None
        return frame.with_samples(self.stft.push(frame.spec))

    def reset(self) -> None:
        self.stft.reset()

    @property
    def delay_samples(self) -> int:
        return self.stft.delay_samples


class StageNode(Node):
    """A configured stage with its ``on_error`` policy (``bypass``, ``reset`` or ``fail``)."""

    def __init__(self, stage: Stage[Any], kind: str, on_error: str) -> None:
        super().__init__()
        self.stage, self.name, self.kind, self.on_error = stage, stage.name, kind, on_error
        self.in_format, self.out_format = stage.input_format, stage.output_format
        self.bypassed = False
        self.errors = 0
        self.nonfinite = 0  # frames whose output held NaN or infinity
        #: set when this frame's output was not finite: the chain resets every node after the frame
        #: (the NaN may come from an earlier stage's side value, e.g. a poisoned noise estimate)
        self.tainted = False
        #: where this node's ``stage_error`` events go: the context's ``emit`` once opened
        self.emit: Emit = discard_events
        self._last_report = 0.0

    def open(self, ctx: StageContext) -> None:
        """Open the stage with ``ctx``; the node's own events go to ``ctx.emit`` too."""
        self.emit = ctx.emit
        self.stage.open(ctx)

    def process(self, frame: Frame) -> Frame:
        if self.bypassed:
            return self._fallback(frame)
        try:
            out = self.stage.process(frame)
        except Exception as exc:  # a stage bug must not stop the audio: apply the configured policy
            return self._failed(frame, exc)
        # A non-finite output is a failed frame too: one NaN would otherwise live on in every later
        # stage's state (and this one's) for the rest of the stream. One dot product per frame.
        data = out.samples if out.samples is not None else out.spec
        if data is not None and not finite_within(data, OUTPUT_CHECK) and not np.isfinite(data).all():
            self.nonfinite += 1
            self.tainted = True
            return self._failed(frame, FloatingPointError("output is not finite (NaN or infinity)"))
        return out

    def _failed(self, frame: Frame, exc: Exception) -> Frame:
        self.errors += 1
        what = f"stage '{self.name}' ({self.kind}) failed: {type(exc).__name__}: {exc}"
        if self.on_error == "fail":
            raise StageError(what) from exc
        if self.on_error == "bypass":
            self.bypassed = True
        else:
            try:
                self.stage.reset()
            except Exception:
                self.bypassed = True
        now = time.monotonic()
        if self.errors == 1 or now - self._last_report > 5.0:  # rate-limited: at most one per 5 s
            self._last_report = now
            action = "bypassed" if self.bypassed else "reset"
            log.warning("%s; %s (error #%d)", what, action, self.errors)
            self.emit("stage_error", pts=frame.pts, stage=self.name, kind=self.kind,
                       error=f"{type(exc).__name__}: {exc}", action=action, count=self.errors)
        return self._fallback(frame)

    def _fallback(self, frame: Frame) -> Frame:
        """The input when it fits the stage's output format, else silence of the output's shape."""
        fin, fout = self.in_format, self.out_format
        if fin.channels == fout.channels and fin.domain == fout.domain:
            return frame
        if fout.domain is Domain.SPECTRAL:
            return frame.with_spec(np.zeros((fout.channels, fout.bins), np.complex64))
        n = frame.n if frame.samples is not None else fout.frame
        return frame.with_samples(np.zeros((fout.channels, n), np.float32))

    @property
    def delay_samples(self) -> int:
        return self.stage.delay_samples

    def reset(self) -> None:
        self.stage.reset()

    def close(self) -> None:
        self.stage.close()


class Chain:
    """A built chain: call :meth:`open`, then :meth:`process` once per hop-sized time frame."""

    def __init__(self, nodes: list[Node], in_format: AudioFormat, taps: set[str],
                 reference: tuple[int, ...] = ()) -> None:
        self.nodes = nodes
        self.in_format = in_format
        #: indices of the captured channels that are the playback reference (side value aec.reference),
        #: not microphones; ``in_format.channels`` counts the microphones only
        self.reference = reference
        self.captured_channels = in_format.channels + len(reference)
        self.out_format = nodes[-1].out_format if nodes else in_format
        self.taps = taps
        self.tap_frames: dict[str, Frame] = {}
        self._tap_synth: dict[str, StftSynthesis] = {}

    @property
    def hop(self) -> int:
        """Samples per chain frame."""
        return self.in_format.frame

    @property
    def delay_samples(self) -> int:
        """Algorithmic delay of the whole chain, samples at the chain rate (output lags input by this)."""
        return sum(node.delay_samples for node in self.nodes)

    def stages(self) -> list[StageNode]:
        """The configured stages, in order (without the inserted STFT nodes)."""
        return [n for n in self.nodes if isinstance(n, StageNode)]

    def open(self, rate: int, positions: np.ndarray | None = None, emit: Emit | None = None,
             speed_of_sound: float = SPEED_OF_SOUND) -> None:
        """Open every stage with a context: chain ``rate`` (Hz), mic ``positions`` float64 ``(M, 3)`` (m)
        or None, ``speed_of_sound`` (m/s); ``emit(type, seq=..., **fields)`` publishes events."""
        sink: Emit = emit or discard_events
        for node in self.stages():
            node.open(StageContext(rate=rate, positions=positions, speed_of_sound=speed_of_sound, emit=sink,
                                   log=logging.getLogger(f"voxd.stage.{node.name}")))
        for name in self.taps:
            tapped = next(n for n in self.nodes if n.name == name)
            if tapped.out_format.domain is Domain.SPECTRAL:
                fmt = tapped.out_format
                self._tap_synth[name] = StftSynthesis(fmt.channels, fmt.n_fft, fmt.frame)

    def process(self, frame: Frame) -> Frame:
        """Run one hop through every node; a ``DISCONTINUITY`` frame resets the chain first.

        A stage whose output is not finite gets its ``on_error`` policy (see :class:`StageNode`), and the
        whole chain is reset after the frame: every stage starts afresh from the next one, so no NaN
        survives in any state (the input to the chain is kept finite by :class:`~voxd.pipeline.Pipeline`).
        """
        if frame.flags & Flags.DISCONTINUITY:
            self.reset()
        tainted = False
        for node in self.nodes:
            t0 = time.perf_counter_ns()
            frame = node.process(frame)
            node.times_ns[node.count % node.times_ns.size] = time.perf_counter_ns() - t0
            node.count += 1
            if node.name in self.taps:
                self._tap(node.name, frame)
            if isinstance(node, StageNode) and node.tainted:
                node.tainted = False
                tainted = True
        if tainted:
            self.reset()
        return frame

    def _tap(self, name: str, frame: Frame) -> None:
        synth = self._tap_synth.get(name)
        if synth is not None and frame.spec is not None:
            frame = frame.with_samples(synth.push(frame.spec))
        self.tap_frames[name] = frame

    def reset(self) -> None:
        """Reset every node (after a discontinuity or a reload)."""
        for node in self.nodes:
            node.reset()
        for synth in self._tap_synth.values():
            synth.reset()

    def close(self) -> None:
        """Close every stage; errors are logged, not raised, so that shutdown always completes."""
        for node in self.nodes:
            try:
                node.close()
            except Exception as exc:
                log.warning("closing %s: %s: %s", node.name, type(exc).__name__, exc)

    def timings(self) -> dict[str, tuple[float, float]]:
        """Per-node (p50, p99) microseconds per frame, by node name."""
        return {node.name: node.timing_us() for node in self.nodes}


def _side_key_errors(loaded: LoadedConfig) -> list[str]:
    errors: list[str] = []
    specs = loaded.config.chain
    provided: dict[str, str] = {}
    if loaded.config.capture.reference_positions():  # the capture itself provides the playback reference
        provided[AEC_REFERENCE] = "capture.reference_channels"
    for spec in specs:
        for key in spec.cls.required_keys(spec.params):
            if key in provided:
                continue
            later = next((s for s in specs
                          if s.index > spec.index and key in s.cls.provided_keys(s.params)), None)
            hint = (f"; stage '{later.name}' ({later.kind}) provides it but comes later (chain.{later.index})"
                    if later else
                    "; set capture.reference_channels to the playback loopback channels"
                    if key == AEC_REFERENCE else "")
            errors.append(loaded.error(("chain", spec.index),
                          f"stage '{spec.name}' ({spec.kind}) requires '{key}', "
                          f"which no earlier stage provides{hint}"))
        for key in spec.cls.provided_keys(spec.params):
            provided.setdefault(key, spec.name)
    return errors


def _array_where(loaded: LoadedConfig) -> str:
    """``FILE:LINE`` (or ``--set ...``) of the key that fixes the number of microphone positions."""
    array = loaded.config.array
    assert array is not None
    if array.positions is not None:  # explicit positions win over a preset
        return loaded.where(("array", "positions"))
    return loaded.where(("array", "count" if array.count is not None else "preset"))


def _no_array(spec: StageSpec) -> str:
    return (f"stage '{spec.name}' ({spec.kind}) needs the array geometry: add an 'array' section "
            "(preset or positions)")


def _channels_mismatch(loaded: LoadedConfig, spec: StageSpec, channels: int, n_positions: int) -> str:
    return (f"stage '{spec.name}' ({spec.kind}) gets {channels} channel{'s' * (channels != 1)} but the "
            f"array ({_array_where(loaded)}) has {n_positions} microphone position{'s' * (n_positions != 1)}")


def build_chain(loaded: LoadedConfig, input_channels: int) -> Chain:
    """Instantiate and check the configured chain for ``input_channels`` captured channels (the
    reference channels of ``capture.reference_channels`` among them: the chain gets the others).

    Raises :class:`~voxd.errors.ConfigError` listing every problem (formats, side-value order, array
    geometry). No stage is opened here.
    """
    cfg = loaded.config
    proc = cfg.processing
    reference = tuple(cfg.capture.reference_positions())
    if reference:
        bad = [c for c in reference if c >= input_channels]
        problem = (f"channel {bad[0]} does not exist: the capture has {input_channels} channel"
                   f"{'s' * (input_channels != 1)} (0-{input_channels - 1})" if bad else
                   f"all {input_channels} channels are references: no microphone left"
                   if len(reference) >= input_channels else None)
        if problem is not None:
            raise ConfigError([loaded.error(("capture", "reference_channels"), problem)])
        input_channels -= len(reference)
    hop = round(proc.rate * proc.hop_ms / 1000)
    n_fft = round(proc.rate * proc.window_ms / 1000)
    in_format = AudioFormat(proc.rate, input_channels, hop)
    errors = _side_key_errors(loaded)
    positions = cfg.mic_positions()
    n_positions = None if positions is None else positions.shape[0]

    nodes: list[Node] = []
    fmt: AudioFormat | None = in_format
    for spec in cfg.chain:
        stage = spec.cls(spec.params, spec.name)
        if spec.cls.needs_geometry and n_positions is None:
            errors.append(loaded.error(("chain", spec.index), _no_array(spec)))
        if fmt is None:  # an earlier format error: keep checking the rest for other errors only
            continue
        domain = spec.cls.domain_for(spec.params)
        if domain is Domain.SPECTRAL and fmt.domain is Domain.TIME:
            nodes.append(AnalysisNode(fmt, n_fft))
            fmt = nodes[-1].out_format
        elif domain is Domain.TIME and fmt.domain is Domain.SPECTRAL:
            nodes.append(SynthesisNode(fmt))
            fmt = nodes[-1].out_format
        # Checked on the format the stage is offered: the positions describe the channels as they
        # reach it (after select or a channel map), not the capture's.
        if spec.cls.needs_geometry and n_positions is not None and fmt.channels != n_positions:
            errors.append(loaded.error(("chain", spec.index),
                          _channels_mismatch(loaded, spec, fmt.channels, n_positions)))
            fmt = None  # like a format error: the stage cannot run on this input
            continue
        try:
            out = stage.accept(fmt)
        except FormatError as exc:
            errors.append(loaded.error(("chain", spec.index),
                          f"stage '{spec.name}' ({spec.kind}) cannot take {fmt.describe()}: {exc}"))
            fmt = None
            continue
        nodes.append(StageNode(stage, spec.kind, spec.on_error))
        fmt = out
    if fmt is not None and fmt.domain is Domain.SPECTRAL:
        nodes.append(SynthesisNode(fmt))

    # tap names were checked against the chain's stage names by the config loader
    if errors:
        raise ConfigError(sorted(set(errors), key=_line_key))
    return Chain(nodes, in_format, set(cfg.output.taps), reference)


def _line_key(line: str) -> tuple[Any, ...]:
    parts = line.split(":", 2)
    try:
        return (0, int(parts[1]), line)
    except (IndexError, ValueError):
        return (1, 0, line)
