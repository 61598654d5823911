"""The configuration's sections as pydantic models, and the resolved :class:`VoxdConfig`.

Every model forbids unknown keys and is frozen. Cross-field rules raise :func:`field_error`, which
names the field the rule is about so that the error points at that key's line, not the section's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
import zmq
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from voxd import security
from voxd.config.suggest import did_you_mean
from voxd.geometry import LINEAR, PRESETS, SPEED_OF_SOUND, preset_positions
from voxd.security import CurveKeys, KeyFileError
from voxd.stage import Stage, StageParams

#: context key that moves an error from the model to one of its fields (see :func:`field_error`)
FIELD_CTX = "voxd_field"

ENDPOINT_SCHEMES = ("tcp://", "ipc://", "inproc://")

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


def custom_error(message: str, **ctx: Any) -> PydanticCustomError:
    """A validation error whose message is exactly ``message`` (pydantic would prefix a ValueError's
    text with ``Value error, ``). The message goes through the context so that braces in user
    values are not taken for template fields."""
    return PydanticCustomError("voxd", "{message}", {"message": message, **ctx})


def field_error(field: str, message: str) -> PydanticCustomError:
    """A model-level (cross-field) error reported at ``field``."""
    return custom_error(message, **{FIELD_CTX: field})


def _whole(x: float) -> bool:
    return abs(x - round(x)) < 1e-6


#: Largest channel index anywhere in a config (the wire's own bound is 1024 channels).
MAX_CHANNEL_INDEX = 1023


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are immutable, floats finite.

    Every number has a range: an unbounded one passed ``voxd check`` and then failed at run time
    (``processing.window_ms: 2e12`` asked for 233 TiB; ``output.hwm: 2**40`` overflowed libzmq's int).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _unique_refs(v: list[int] | None) -> list[int] | None:
    if v is not None and len(set(v)) != len(v):
        dup = next(c for c in v if v.count(c) > 1)
        raise custom_error(f"channel {dup} is listed twice")
    return v


#: playback reference (loopback) channels of the capture, 0-based
ReferenceChannels = list[Annotated[int, Field(ge=0, le=63)]] | None


class FileCapture(Section):
    """Read audio from a sound file (``voxd process``, tests, benchmarks)."""

    type: Literal["file"] = Field("file", description="Capture source type.")
    path: str | None = Field(
        None, validate_default=True, description="Sound file to read (WAV, FLAC...); any channel count. A "
        "relative path is relative to the config file's directory (given with --set: to the working "
        "directory)."
    )
    realtime: bool = Field(True, description="Pace reading at the file's real-time rate.")
    loop: bool = Field(False, description="Start again at the end of the file instead of stopping.")
    reference_channels: ReferenceChannels = Field(
        None, min_length=1, max_length=8, description="File channels (0-based) that carry the playback "
        "reference (loopback) for the 'aec' stage: they leave the microphone channels and travel with each "
        "frame as the side value aec.reference."
    )

    @field_validator("reference_channels")
    @classmethod
    def _refs_unique(cls, v: list[int] | None) -> list[int] | None:
        return _unique_refs(v)

    def reference_positions(self) -> list[int]:
        """Indices of the reference channels in the blocks the source delivers ([] without any)."""
        return list(self.reference_channels or [])

    @field_validator("path")
    @classmethod
    def _path_given(cls, v: str | None) -> str:
        if v is None:
            raise custom_error("required for capture.type 'file'")
        if not v.strip():
            raise custom_error("must be a file path, got an empty string")
        return v


class PyAudioCapture(Section):
    """A live input device through PortAudio (PyAudio), in callback mode."""

    type: Literal["pyaudio"] = Field("pyaudio", description="Capture source type.")
    device: str | Annotated[int, Field(ge=0, le=MAX_CHANNEL_INDEX)] | None = Field(
        None, description="Input device: a substring of its name (case-insensitive) or its index "
        "(see `voxd devices`); default: the system's default input device."
    )
    channels: int = Field(1, ge=1, le=64, description="Channels to open on the device.")
    rate: int | None = Field(
        None, ge=8000, le=192000, description="Device sample rate (Hz); resampled to processing.rate. "
        "Default: processing.rate when the device supports it, else the device's default rate."
    )
    block_ms: FiniteFloat = Field(10.0, gt=0, le=200, description="Device buffer (ms) per callback.")
    channel_map: list[Annotated[int, Field(ge=0, le=63)]] | None = Field(
        None, min_length=1, max_length=64, description="Device channels to keep, in chain order (0-based), "
        "e.g. "
        "[0, 1, 2, 3, 4, 5] to drop the loopback channels 6-7 of a ReSpeaker 6-mic board."
    )
    reference_channels: ReferenceChannels = Field(
        None, min_length=1, max_length=8, description="Device channels (0-based) that carry the playback "
        "reference (loopback) for the 'aec' stage, e.g. [6, 7] on a ReSpeaker 6-mic board: they leave the "
        "microphone channels and travel with each frame as the side value aec.reference."
    )
    reference_device: str | Annotated[int, Field(ge=0, le=MAX_CHANNEL_INDEX)] | None = Field(
        None, description="A second input device that carries the playback reference for the 'aec' stage "
        "(e.g. an ALSA PCM on the sound server's monitor of the loudspeaker; name substring or index, see "
        "`voxd devices`): its clock is not the microphones', so it is resampled onto theirs, the rate "
        "offset measured. Needs the 'aec' extra. Instead of reference_channels."
    )
    reference_device_channels: int = Field(
        1, ge=1, le=8, description="Channels to open on reference_device (all are references)."
    )
    reference_device_buffer_ms: FiniteFloat = Field(
        20.0, ge=5, le=1000, description="Reference audio kept buffered between the two devices' callbacks "
        "(ms): covers their jitter; a constant delay the echo canceller estimates."
    )
    stall_timeout_ms: FiniteFloat = Field(
        2000.0, gt=0, le=60_000, description="No data for this long means the device is lost (a stalled "
        "device delivers nothing and raises nothing)."
    )
    queue_ms: FiniteFloat = Field(
        1000.0, gt=0, le=10_000,
        description="Audio the callback may queue for the worker before overrunning (ms)."
    )
    retry_max_s: FiniteFloat = Field(
        10.0, gt=0, le=3600,
        description="Cap of the exponential backoff between attempts to reopen a lost device (s)."
    )

    @model_validator(mode="after")
    def _map_in_range(self) -> PyAudioCapture:
        if self.channel_map is not None:
            bad = [c for c in self.channel_map if c >= self.channels]
            if bad:
                raise field_error("channel_map", f"channel {bad[0]} does not exist: the device is opened "
                                  f"with {self.channels} channel{'s' if self.channels != 1 else ''} (0-"
                                  f"{self.channels - 1})")
        if self.reference_channels is not None:
            try:
                _unique_refs(self.reference_channels)
            except PydanticCustomError as exc:
                raise field_error("reference_channels", exc.message()) from None
            bad = [c for c in self.reference_channels if c >= self.channels]
            if bad:
                raise field_error("reference_channels", f"channel {bad[0]} does not exist: the device is "
                                  f"opened with {self.channels} channel{'s' if self.channels != 1 else ''} "
                                  f"(0-{self.channels - 1})")
            both = [c for c in self.reference_channels if c in (self.channel_map or ())]
            if both:
                raise field_error("reference_channels", f"channel {both[0]} is also in channel_map: a "
                                  "reference channel is not a microphone")
            mics = len(self.channel_map) if self.channel_map is not None else self.channels
            if self.channel_map is None and mics - len(self.reference_channels) < 1:
                raise field_error("reference_channels", f"all {self.channels} channels are references: no "
                                  "microphone left")
        if self.reference_device is not None:
            if self.reference_channels is not None:
                raise field_error("reference_device", "give the playback reference either as "
                                  "reference_channels of the capture device or as a reference_device, "
                                  "not both")
            from voxd.sources.drift import resampler_class

            try:
                resampler_class()
            except ImportError as exc:
                raise field_error("reference_device", str(exc)) from None
        return self

    @property
    def out_channels(self) -> int:
        """Channels the source delivers to the pipeline (after the channel map, references included: those
        of the device, then those of ``reference_device``)."""
        refs = len(self.reference_channels) if self.channel_map is not None and self.reference_channels else 0
        mics = (len(self.channel_map) + refs) if self.channel_map is not None else self.channels
        return mics + (self.reference_device_channels if self.reference_device is not None else 0)

    def device_channels(self) -> list[int] | None:
        """The device channels the source keeps, in delivery order (None: all, in device order): the
        channel map, then the reference channels."""
        if self.channel_map is None:
            return None
        return list(self.channel_map) + list(self.reference_channels or [])

    def reference_positions(self) -> list[int]:
        """Indices of the reference channels in the blocks the source delivers ([] without any)."""
        if self.reference_device is not None:  # appended after the device's channels
            first = self.out_channels - self.reference_device_channels
            return list(range(first, self.out_channels))
        refs = list(self.reference_channels or [])
        if self.channel_map is not None:
            return list(range(len(self.channel_map), len(self.channel_map) + len(refs)))
        return refs


#: capture models by ``type``. The loader picks the model from this table itself (rather than through
#: a pydantic union) so that error paths never show a union tag.
CAPTURE_TYPES: dict[str, type[Section]] = {"file": FileCapture, "pyaudio": PyAudioCapture}
CaptureConfig = Annotated[FileCapture | PyAudioCapture, Field(discriminator="type")]


class ProcessingConfig(Section):
    """The chain's sample rate and its shared STFT."""

    rate: int = Field(
        16000, ge=8000, le=48000, description="Chain sample rate (Hz); capture is resampled to it."
    )
    window_ms: FiniteFloat = Field(20.0, gt=0, le=128, description="STFT window length (ms).")
    hop_ms: FiniteFloat = Field(10.0, gt=0, le=64, description="STFT hop (ms): the chain's frame length.")
    window: Literal["sqrt-hann"] = Field(
        "sqrt-hann", description="Analysis and synthesis window (sqrt-Hann: perfect reconstruction)."
    )

    @model_validator(mode="after")
    def _whole_samples(self) -> ProcessingConfig:
        # Overlap-add needs the window to be a whole number (>= 2) of hops, and both to be whole samples.
        ratio = self.window_ms / self.hop_ms
        if not _whole(ratio) or round(ratio) < 2:
            raise field_error("hop_ms", f"window_ms / hop_ms must be a whole number >= 2, got {ratio:g}")
        for name, ms in (("hop_ms", self.hop_ms), ("window_ms", self.window_ms)):
            n = self.rate * ms / 1000
            if not _whole(n):
                raise field_error(name, f"{ms:g} ms is not a whole number of samples at {self.rate} Hz")
        return self

    @property
    def hop_samples(self) -> int:
        """The hop in samples at ``rate``."""
        return round(self.rate * self.hop_ms / 1000)

    @property
    def window_samples(self) -> int:
        """The window (FFT) length in samples at ``rate``."""
        return round(self.rate * self.window_ms / 1000)


_XYZ: dict[str, Any] = {"minItems": 3, "maxItems": 3}  # the schema's view of _xyz


def _xyz(row: list[float]) -> list[float]:
    if len(row) != 3:
        raise custom_error(f"each position must be [x, y, z] in metres, got {len(row)} numbers")
    return row


#: one microphone position [x, y, z] (m), within 10 m of the array centre
Position = Annotated[list[Annotated[FiniteFloat, Field(ge=-10, le=10)]], AfterValidator(_xyz),
                     Field(json_schema_extra=_XYZ)]


def _known_preset(name: str) -> str:
    if name not in PRESETS:
        # A truncated name ('respeaker-4mic') is closer by edit ratio to another board's name
        # ('respeaker-6mic') than to its own: a unique prefix match comes first.
        longer = [p for p in PRESETS if p.startswith(name)]
        hint = f" (did you mean '{longer[0]}'?)" if len(longer) == 1 else did_you_mean(name, PRESETS)
        raise custom_error(f"unknown preset '{name}'{hint}; known presets: {', '.join(sorted(PRESETS))}")
    return name


#: a preset name; the schema lists the known ones
PresetName = Annotated[str, AfterValidator(_known_preset), Field(json_schema_extra={"enum": sorted(PRESETS)})]


class ArrayConfig(Section):
    """Microphone array geometry: a named preset or explicit positions (explicit positions win).

    Positions are metres relative to the array centre, one row per channel as the channels reach the
    stages that use the geometry (after ``select``); azimuths count counter-clockwise from +x, z up.
    """

    preset: PresetName | None = Field(
        None, description="Named array geometry (README: Array geometry); 'linear' also needs count and "
        "spacing."
    )
    positions: list[Position] | None = Field(
        None, min_length=1, max_length=MAX_CHANNEL_INDEX + 1, description="Microphone positions [x, y, z] "
        "(m), one row per channel; they "
        "win over preset."
    )
    count: int | None = Field(None, ge=2, le=64, description="Number of microphones (preset 'linear' only).")
    spacing: FiniteFloat | None = Field(
        None, gt=0, le=1, description="Distance between neighbouring microphones (m) (preset 'linear' only)."
    )
    speed_of_sound: FiniteFloat = Field(SPEED_OF_SOUND, ge=300, le=400, description="Speed of sound (m/s).")

    @model_validator(mode="after")
    def _geometry_given(self) -> ArrayConfig:
        # Rules on present keys first, so that an unknown or missing preset is reported alone.
        linear = self.preset == LINEAR
        for key in ("count", "spacing"):
            if getattr(self, key) is not None and not linear:
                used = f"not '{self.preset}'" if self.preset is not None else "and array.preset is not given"
                raise field_error(key, f"only used by preset '{LINEAR}', {used}")
        if linear:
            what = {"count": "number of microphones", "spacing": "metres between microphones"}
            missing = [k for k in what if getattr(self, k) is None]
            if missing:
                also = f", as is array.{missing[1]} ({what[missing[1]]})" if len(missing) > 1 else ""
                raise field_error(missing[0], f"required for preset '{LINEAR}' ({what[missing[0]]}){also}")
        if self.preset is None and self.positions is None:
            raise custom_error("give array.preset or array.positions")
        return self

    def positions_m(self) -> np.ndarray:
        """Microphone positions float64 ``(M, 3)`` in metres: the explicit ``positions`` when given
        (so that ``--set array.positions=...`` overrides a config's preset), else the preset's."""
        if self.positions is not None:
            return np.asarray(self.positions, dtype=np.float64).reshape(-1, 3)
        assert self.preset is not None  # the validator requires one of the two
        return preset_positions(self.preset, self.count, self.spacing)


def _endpoint(value: str, info: ValidationInfo) -> str:
    if not value.startswith(ENDPOINT_SCHEMES):
        raise custom_error(f"must start with tcp://, ipc:// or inproc://, got '{value}'")
    data = info.data  # the fields declared before ``endpoints``: insecure, curve
    # A curve section that failed has its own error; a second one here would only repeat it.
    if "curve" not in data or "insecure" not in data:
        return value
    if data["curve"] is None and not data["insecure"] and not security.is_local_endpoint(value):
        what = ("is an abstract socket (no file, so no permissions: every local user could connect)"
                if value.startswith("ipc://@") else "is not loopback, ipc:// or inproc://")
        raise custom_error(f"'{value}' {what}: binding it needs CURVE keys (output.curve; see 'voxd "
                           "keygen') or an explicit output.insecure: true")
    return value


def _octal(value: Any) -> Any:
    """A file mode written as a string is octal (``'0660'``, ``'660'``, ``'0o660'``); YAML reads ``0660``
    itself as octal. A plain ``660`` is decimal to YAML: out of range, and the error says so."""
    if isinstance(value, str):
        try:
            return int(value.removeprefix("0o"), 8)
        except ValueError:
            raise custom_error(f"must be an octal file mode such as '0660', got '{value}'") from None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0o777:
        raise custom_error(f"must be an octal file mode such as 0660 (a leading 0, or quoted), got {value}")
    return value


def _key_error(exc: KeyFileError) -> PydanticCustomError:
    return custom_error(str(exc))


def _client_key(value: str) -> str:
    try:
        security.load_public_key(value)
    except KeyFileError as e:
        raise _key_error(e) from None
    return value


class CurveConfig(Section):
    """CURVE security for the publisher: ZeroMQ's encryption, and a ZAP allow-list of the clients'
    public keys. Key files are ZeroMQ certificates as written by ``voxd keygen``; relative paths are
    relative to the daemon's working directory. Keys are never written inline in the config except
    the clients' public ones, so the config file itself holds no secret."""

    secret_key_file: str = Field(
        description="The daemon's secret certificate (NAME.key_secret from 'voxd keygen'); it must not "
        "be accessible by group or others (chmod 600)."
    )
    allowed_clients: list[Annotated[str, AfterValidator(_client_key)]] = Field(
        default_factory=list, description="Clients allowed to subscribe: public certificate files "
        "(NAME.key) or Z85 public keys (40 characters, as 'voxd keygen' prints them)."
    )
    allowed_clients_dir: str | None = Field(
        None, description="A directory whose *.key public certificates are all allowed clients (read at "
        "start)."
    )
    _keys: CurveKeys | None = PrivateAttr(None)

    @model_validator(mode="before")
    @classmethod
    def _curve_available(cls, data: Any) -> Any:
        if not zmq.has("curve"):
            raise custom_error(security.curve_missing_message())
        return data

    @field_validator("secret_key_file")
    @classmethod
    def _secret_key(cls, v: str) -> str:
        try:
            security.load_keypair_file(v)
        except KeyFileError as e:
            raise _key_error(e) from None
        return v

    @field_validator("allowed_clients_dir")
    @classmethod
    def _client_dir(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                keys = security.load_public_key_dir(v)
            except KeyFileError as e:
                raise _key_error(e) from None
            if not keys:
                raise custom_error(f"{v}: no public key files (*.key) in it: no client could connect")
        return v

    @model_validator(mode="after")
    def _load_keys(self) -> CurveConfig:
        if not self.allowed_clients and self.allowed_clients_dir is None:
            raise field_error("allowed_clients", "give allowed_clients or allowed_clients_dir: the public "
                              "keys of the clients allowed to subscribe")
        self._keys = self.load()
        return self

    def load(self) -> CurveKeys:
        """Read the key files (again): the daemon's key pair and the allow-list.

        Raises :class:`~voxd.security.KeyFileError` if a file went bad since validation.
        """
        public, secret = security.load_keypair_file(self.secret_key_file)
        allowed = [security.load_public_key(entry) for entry in self.allowed_clients]
        if self.allowed_clients_dir is not None:
            allowed += security.load_public_key_dir(self.allowed_clients_dir)
        return CurveKeys(public, secret, frozenset(allowed))

    @property
    def keys(self) -> CurveKeys:
        """The keys as read when this config was validated (read now for an unvalidated instance)."""
        if self._keys is None:
            self._keys = self.load()
        return self._keys


def _wyoming_uri(value: str, info: ValidationInfo) -> str:
    from voxd.wyoming_out import parse_uri  # the one parser, shared with the server

    try:
        parse_uri(value)
    except ValueError as exc:
        raise custom_error(str(exc)) from None
    if value.startswith("tcp://") and not info.data.get("allow_network", True) \
            and not security.is_local_endpoint(value):
        raise custom_error(f"'{value}' is not a loopback address: Wyoming has no encryption or "
                           "authentication, so serving the network needs an explicit allow_network: true")
    return value


class WyomingOutput(Section):
    """The Wyoming mic service (``voxd/wyoming_out.py``): the processed stream for Home Assistant
    satellites (``wyoming-satellite --mic-uri``) and other Wyoming clients.

    ``allow_network`` comes before ``uri`` on purpose: the URI's check needs it (as in OutputConfig).
    """

    allow_network: bool = Field(
        False, description="Allow a tcp:// address other than loopback. Wyoming has no encryption and no "
        "authentication: anyone who can reach the port hears the microphones.")
    uri: Annotated[str, AfterValidator(_wyoming_uri)] = Field(
        "tcp://127.0.0.1:10600", description="Where to serve: tcp://HOST:PORT (loopback unless "
        "allow_network: true) or unix://PATH.")
    queue_ms: FiniteFloat = Field(
        2000.0, ge=20, le=60_000, description="Audio a client may fall behind (ms) before it is dropped; "
        "a stalled client never slows the daemon.")


class OutputConfig(Section):
    """The ZeroMQ publisher.

    ``insecure`` and ``curve`` come before ``endpoints`` on purpose: pydantic validates fields in
    order, and each endpoint's check needs to know whether keys were given.
    """

    insecure: bool = Field(
        False, description="Allow endpoints other than loopback, ipc:// and inproc:// without CURVE keys "
        "(anyone who can reach them can listen; a warning is logged at start)."
    )
    curve: CurveConfig | None = Field(
        None, description="CURVE encryption and client allow-list; required to bind an endpoint that is "
        "not loopback, ipc:// or inproc:// (unless insecure: true)."
    )
    endpoints: list[Annotated[str, AfterValidator(_endpoint)]] = Field(
        default_factory=lambda: ["tcp://127.0.0.1:7700"],
        min_length=1,
        description="ZeroMQ PUB endpoints to bind (tcp://, ipc:// or inproc://); other than loopback, "
        "ipc:// or inproc://, they need curve or insecure: true.",
    )
    format: Literal["s16le", "f32le"] = Field("s16le", description="Sample format of audio payloads.")
    frame_ms: FiniteFloat = Field(
        20.0, gt=0, le=1000, description="Duration of one published audio message (ms)."
    )
    hwm: int = Field(
        1000, ge=1, le=100_000, description="Send high-water mark (messages); a slow subscriber loses the "
        "rest."
    )
    taps: list[str] = Field(
        default_factory=list, description="Stage names whose output is also published as 'audio.<name>'."
    )
    ipc_mode: Annotated[int, BeforeValidator(_octal)] = Field(
        0o660, ge=0, le=0o777, description="Mode of ipc:// socket files (octal, e.g. 0660 or '0660'): who "
        "may connect. Default: owner and group."
    )
    stats_interval_s: FiniteFloat = Field(5.0, gt=0, le=3600,
                                          description="Interval between 'stats' messages (s).")
    wait_for_subscriber_s: FiniteFloat = Field(
        0.0, ge=0, le=3600, description="Wait up to this long for a first subscriber before starting (s)."
    )
    wyoming: WyomingOutput | None = Field(
        None, description="Also serve the processed stream as a Wyoming mic service (Home Assistant voice "
        "satellites); e.g. {uri: 'tcp://127.0.0.1:10600'}.")

    @property
    def insecure_endpoints(self) -> list[str]:
        """Endpoints reachable from other machines with no CURVE protection (allowed by ``insecure``)."""
        if self.curve is not None:
            return []
        return [ep for ep in self.endpoints if not security.is_local_endpoint(ep)]


class LogConfig(Section):
    """Logging."""

    level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")


def _stage_name(value: str | None) -> str | None:
    # Names become tap topics ('audio.<name>') and appear in stats: keep them plain.
    if value is not None and not (value[:1].isalnum() and value.replace("-", "").replace("_", "").isalnum()):
        raise custom_error(f"must be letters, digits, '-' and '_', got '{value}'")
    return value


class ChainEntry(Section):
    """The keys every chain entry has besides its stage's own parameters."""

    stage: str = Field(description="Stage kind (see 'voxd plugins').")
    name: Annotated[str | None, AfterValidator(_stage_name)] = Field(
        None, description="Name of this stage in logs, stats and taps (default: the kind, then kind-2...)."
    )
    on_error: Literal["bypass", "reset", "fail"] = Field(
        "reset",
        description="When the stage raises: pass the frame through (bypass), reset the stage and pass it "
        "through (reset), or stop the daemon (fail).",
    )


#: keys of a chain entry that are not stage parameters
ENTRY_KEYS = tuple(ChainEntry.model_fields)

#: section models by top-level key (``capture`` and ``chain`` are resolved by the loader)
SECTIONS: dict[str, type[Section]] = {
    "processing": ProcessingConfig,
    "array": ArrayConfig,
    "output": OutputConfig,
    "log": LogConfig,
}
TOP_LEVEL_KEYS = ("capture", "processing", "array", "chain", "output", "log")


@dataclass(frozen=True)
class StageSpec:
    """One resolved chain entry: ``index`` in the chain list, stage ``kind``, unique ``name``,
    ``on_error`` policy, validated ``params`` (an instance of ``cls.Params``) and the stage class."""

    index: int
    kind: str
    name: str
    on_error: str
    params: StageParams
    cls: type[Stage[Any]]


def _plain(value: Any) -> str:
    """A parameter value as a config would write it (``80``, ``0.5``, ``false``, ``[0, 1]``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_plain(v) for v in value) + "]"
    return str(value)


@dataclass(frozen=True)
class VoxdConfig:
    """The whole validated configuration."""

    capture: CaptureConfig
    processing: ProcessingConfig
    array: ArrayConfig | None
    output: OutputConfig
    log: LogConfig
    chain: list[StageSpec]

    def mic_positions(self) -> np.ndarray | None:
        """Microphone positions float64 ``(M, 3)`` in metres from the ``array`` section (see
        :meth:`ArrayConfig.positions_m`), or None without one."""
        return None if self.array is None else self.array.positions_m()

    def describe_chain(self) -> str:
        """The chain in one line, from the config itself (documents quote this, never a hand-written
        copy): each stage's kind, its name when it differs, and the parameters the config sets, e.g.
        ``highpass (cutoff_hz 80, order 2) -> vad (channel 0) -> noise``."""
        parts = []
        for spec in self.chain:
            given = spec.params.model_dump(include=spec.params.model_fields_set)
            args = ", ".join(f"{k} {_plain(v)}" for k, v in given.items())
            label = spec.kind if spec.name == spec.kind else f"{spec.name}: {spec.kind}"
            parts.append(f"{label} ({args})" if args else label)
        return " -> ".join(parts) or "(empty)"

    @property
    def speed_of_sound(self) -> float:
        """``array.speed_of_sound`` (m/s), or the default 343 m/s without an ``array`` section."""
        return SPEED_OF_SOUND if self.array is None else self.array.speed_of_sound
