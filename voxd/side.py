"""Side values: the declared vocabulary of what stages hand to later stages on ``Frame.side``.

A side value is named by a :class:`SideKey`: a ``str`` (so it is the dictionary key of ``frame.side``,
the key of the wire header and of ``stats``, exactly as before there were declarations) that also
carries its declaration: dtype, shape, unit, whether it travels in the wire header of each audio
frame, and whether the daemon's ``stats`` message (and so ``voxd status``) reports its latest value.

Each key is declared once, with :func:`declare`: voxd's own below, in the core, because several
plugins, the pipeline and the daemon read them; a third-party plugin declares its own keys at import
time the same way and imports the core's (``from voxd.side import SPEECH``) instead of spelling a
name. Declaring a name again with another declaration is an error; the same declaration again returns
the existing key (a plugin module imported twice).

A key that is not declared still works as a plain string (older plugins): it travels in the wire
header when its value is a JSON scalar, as every scalar side value did before the vocabulary existed.

This module imports nothing from voxd: every other module may import it.
"""

from __future__ import annotations

from typing import Any, Literal

Dtype = Literal["bool", "float", "float32", "complex64"]

__all__ = [
    "AEC_ACTIVE",
    "AEC_DELAY_MS",
    "AEC_DOUBLETALK",
    "AEC_ECHO_ONLY",
    "AEC_ERLE_DB",
    "AEC_REFERENCE",
    "AGC_GAIN_DB",
    "DOA_CONFIDENCE",
    "DOA_DEG",
    "LEVEL_DBFS",
    "MASK_GAIN",
    "NOISE_COV",
    "NOISE_PSD",
    "NOISE_SPP",
    "SPEECH",
    "SPEECH_PROB",
    "SideKey",
    "declare",
    "declared",
    "markdown_table",
    "on_wire",
    "watched_names",
]


class SideKey(str):
    """The name of a side value, with its declaration (read-only attributes).

    ``dtype``: ``bool``/``float`` for scalars (Python or numpy), ``float32``/``complex64`` for arrays;
    ``shape``: ``()`` for a scalar, else the array's shape in words, e.g. ``(channels, bins)``;
    ``unit``: its unit (``""`` for flags); ``wire``: whether it travels in the header of every audio
    frame (scalars only: arrays stay in-process); ``watched``: whether ``stats`` carries its latest
    value (implies ``wire``: the daemon reads it from the published frames); ``provider``: the stage
    kind(s) that write it, and ``description``: one line, both for the documentation.
    """

    dtype: Dtype
    shape: str
    unit: str
    wire: bool
    watched: bool
    provider: str
    description: str

    def __new__(cls, name: str, *, dtype: Dtype, shape: str, unit: str, wire: bool, watched: bool,
                provider: str, description: str) -> SideKey:
        if not name or name != name.strip():
            raise ValueError(f"a side key needs a name without surrounding blanks, got {name!r}")
        if watched and not wire:
            raise ValueError(f"side key '{name}': a watched value must travel on the wire (stats reads it "
                             "from the published frames)")
        if wire and shape != "()":
            raise ValueError(f"side key '{name}': only scalars travel on the wire, not shape {shape}")
        key = super().__new__(cls, name)
        for attr, value in (("dtype", dtype), ("shape", shape), ("unit", unit), ("wire", wire),
                            ("watched", watched), ("provider", provider), ("description", description)):
            object.__setattr__(key, attr, value)
        return key

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"side key '{self}' is read-only")

    def __reduce__(self) -> tuple[Any, ...]:
        # pickled as its name (a LoadedConfig crosses a process boundary at reload): the other side
        # has the same declarations, made by the same imports
        return (_by_name, (str(self),))

    def declaration(self) -> tuple[str, str, str, bool, bool, str, str]:
        """Everything declared about the key except its name (to compare two declarations)."""
        return (self.dtype, self.shape, self.unit, self.wire, self.watched, self.provider, self.description)


_VOCABULARY: dict[str, SideKey] = {}


def declare(name: str, *, dtype: Dtype, shape: str = "()", unit: str = "", wire: bool, watched: bool = False,
            provider: str, description: str) -> SideKey:
    """Declare the side value ``name`` (see :class:`SideKey` for the fields) and return its key.

    Raises ``ValueError`` when ``name`` is already declared differently.
    """
    key = SideKey(name, dtype=dtype, shape=shape, unit=unit, wire=wire, watched=watched, provider=provider,
                  description=description)
    known = _VOCABULARY.get(name)
    if known is not None:
        if known.declaration() != key.declaration():
            raise ValueError(f"side key '{name}' is already declared (by {known.provider}) differently")
        return known
    _VOCABULARY[name] = key
    return key


def declared() -> list[SideKey]:
    """Every declared key, in declaration order."""
    return list(_VOCABULARY.values())


def markdown_table() -> str:
    """The declared vocabulary as a Markdown table (``docs/side-values.md`` holds it; a test keeps the
    two equal)."""
    lines = ["| key | dtype | shape | unit | wire header | in `stats` | provided by | meaning |",
             "|---|---|---|---|---|---|---|---|"]
    for k in declared():
        lines.append(f"| `{k}` | {k.dtype} | {k.shape} | {k.unit or '-'} | {'yes' if k.wire else 'no'} "
                     f"| {'yes' if k.watched else 'no'} | {k.provider} | {k.description} |")
    return "\n".join(lines)


def _by_name(name: str) -> str:
    return _VOCABULARY.get(name, name)


def on_wire(name: str) -> bool:
    """Whether a side value called ``name`` may travel in the wire header: its declaration says, and an
    undeclared name may (when its value is a JSON scalar, which the caller checks)."""
    key = _VOCABULARY.get(name)
    return True if key is None else key.wire


def watched_names() -> frozenset[str]:
    """Names whose latest value the daemon's ``stats`` message reports."""
    return frozenset(k for k in _VOCABULARY.values() if k.watched)


# ---------------------------------------------------------------------------- voxd's own vocabulary
SPEECH = declare(
    "speech", dtype="bool", wire=True, provider="vad",
    description="the smoothed speech state (a segment is open); the wire header's own `speech` field")
SPEECH_PROB = declare(
    "speech_prob", dtype="float", unit="probability 0..1", wire=True, watched=True, provider="vad",
    description="the detector's latest speech probability")
NOISE_PSD = declare(
    "noise.psd", dtype="float32", shape="(channels, bins)", unit="STFT power (squared magnitude) per bin",
    wire=False, provider="noise, beamform",
    description="noise power spectral density per channel (a beamformer: of its one output channel)")
NOISE_COV = declare(
    "noise.cov", dtype="complex64", shape="(bins, channels, channels)",
    unit="STFT power (squared magnitude) per bin", wire=False, provider="noise, beamform",
    description="noise spatial covariance E[n n^H] per bin")
NOISE_SPP = declare(
    "noise.spp", dtype="float32", shape="(channels, bins)", unit="probability 0..1", wire=False,
    provider="noise", description="speech presence probability per channel and bin")
DOA_DEG = declare(
    "doa_deg", dtype="float", unit="deg, counter-clockwise from +x, [0, 360)", wire=True, watched=True,
    provider="doa", description="tracked direction of arrival of the talker")
DOA_CONFIDENCE = declare(
    "doa.confidence", dtype="float", unit="0..1", wire=True, provider="doa",
    description="share of the recent speech's PHAT-weighted cross-power that one plane wave from "
                "doa_deg explains (0 before the first estimate)")
LEVEL_DBFS = declare(
    "level_dbfs", dtype="float", unit="dBFS", wire=True, watched=True, provider="agc",
    description="the AGC's speech level estimate of its input (-120 before the first speech)")
AGC_GAIN_DB = declare(
    "agc_gain_db", dtype="float", unit="dB", wire=True, watched=True, provider="agc",
    description="the AGC's gain at the frame's last sample (without the limiter's momentary reduction)")
DENOISE_GAIN = declare(
    "denoise.gain", dtype="float32", shape="(channels, bins)", unit="linear magnitude gain 0..1", wire=False,
    provider="denoise (engine voxd)",
    description="the denoiser's effective gain per channel it runs on (its `channels`, all by default) "
                "and bin: output over input magnitude (attenuation limit and mix included), clipped to 1; "
                "a speech presence cue for later stages (the beamformer's `mask: denoise`)")
MASK_GAIN = declare(
    "mask.gain", dtype="float32", shape="(1, bins)", unit="ratio mask 0..1", wire=False, provider="mask",
    description="the learned estimate, from every microphone, of the share of each bin that is the target "
                "talker at the reference microphone (not other talkers, music, TV or noise); drives the "
                "beamformer's `mask: model` statistics")
AEC_REFERENCE = declare(
    "aec.reference", dtype="float32", shape="(ref_channels, samples)", unit="full scale", wire=False,
    provider="pipeline (capture.reference_channels)",
    description="the playback reference (loopback channels of the capture), sample-synchronous with the "
                "frame's microphone samples; the aec stage's far end")
AEC_ERLE_DB = declare(
    "aec.erle_db", dtype="float", unit="dB", wire=True, watched=True, provider="aec",
    description="the echo canceller's echo return loss enhancement as the stage measures it: smoothed "
                "input over output power of its first channel while the reference is active (0 otherwise)")
AEC_DELAY_MS = declare(
    "aec.delay_ms", dtype="float", unit="ms", wire=True, watched=True, provider="aec (engine speex)",
    description="the estimated delay of the echo behind the playback reference (0 until the first estimate); "
                "the reference is delayed by it, less a margin, before the echo canceller")
AEC_ACTIVE = declare(
    "aec.active", dtype="bool", wire=True, watched=True, provider="aec",
    description="playback present: the reference was not silent within the stage's silence_hold_ms (the "
                "stage cancels; otherwise it passes its input through)")
AEC_ECHO_ONLY = declare(
    "aec.echo_only", dtype="bool", wire=True, provider="aec (engine speex)",
    description="the frame's first channel holds the playback's echo and nothing else the stage can tell "
                "apart: its output is far under the echo it estimated, or the canceller has not converged "
                "yet while the playback is loud; a vad stage after it reports no speech in such frames")
AEC_DOUBLETALK = declare(
    "aec.doubletalk", dtype="bool", wire=True, watched=True, provider="aec (engine speex)",
    description="double talk: the playback's echo is present and so is something else (the near end: a "
                "user talking over the playback)")
