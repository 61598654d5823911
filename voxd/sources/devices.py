"""PortAudio input devices: listing them and resolving the config's ``capture.device``.

PortAudio scans devices once, when it is initialised; to see a device that appeared (or came back)
PortAudio must be terminated and initialised again, which :func:`portaudio` does on every call.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from voxd.errors import EX_UNAVAILABLE, VoxdError

log = logging.getLogger("voxd.devices")

_HANDLERS: list[Any] = []  # keeps the ctypes callbacks alive for the life of the process


def quiet_alsa() -> None:
    """Route the native libraries' chatter to the DEBUG log instead of stderr: libasound prints a dozen
    lines about missing PCMs, and libjack a few about no JACK server, at every PortAudio start. Our
    own one-line errors stay readable. Harmless when a library is absent."""
    if _HANDLERS:
        return
    alsa_type = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                                 ctypes.c_char_p)

    def alsa(filename: bytes, line: int, function: bytes, err: int, fmt: bytes) -> None:
        log.debug("alsa: %s:%d %s: %s", filename.decode(errors="replace"), line,
                  function.decode(errors="replace"), fmt.decode(errors="replace"))

    jack_type = ctypes.CFUNCTYPE(None, ctypes.c_char_p)

    def jack(msg: bytes) -> None:
        log.debug("jack: %s", msg.decode(errors="replace"))

    _HANDLERS.extend([alsa_type(alsa), jack_type(jack)])
    for lib, setters, handler in (("asound", ("snd_lib_error_set_handler",), _HANDLERS[0]),
                                  ("jack", ("jack_set_error_function", "jack_set_info_function"),
                                   _HANDLERS[1])):
        name = ctypes.util.find_library(lib)
        if name is None:
            continue
        with contextlib.suppress(OSError, AttributeError):
            dll = ctypes.cdll.LoadLibrary(name)
            for setter in setters:
                getattr(dll, setter)(handler)


def import_pyaudio() -> Any:
    """The ``pyaudio`` module, or a one-line error saying how to get it."""
    try:
        import pyaudio
    except ImportError as exc:  # pragma: no cover - PyAudio is a dependency; this is for broken installs
        raise VoxdError(f"live capture needs PyAudio (pip install PyAudio; Debian: portaudio19-dev): {exc}",
                        EX_UNAVAILABLE) from None
    return pyaudio


@contextlib.contextmanager
def portaudio() -> Iterator[Any]:
    """A freshly initialised ``pyaudio.PyAudio`` (so devices are rescanned), terminated on exit."""
    pyaudio = import_pyaudio()
    quiet_alsa()
    pa = pyaudio.PyAudio()
    try:
        yield pa
    finally:
        pa.terminate()


@dataclass(frozen=True)
class InputDevice:
    """An input device as PortAudio reports it; ``default_rate`` in Hz."""

    index: int
    name: str
    max_channels: int
    default_rate: float
    host_api: str
    is_default: bool = False


def input_devices(pa: Any) -> list[InputDevice]:
    """Every device of ``pa`` with at least one input channel."""
    try:
        default = pa.get_default_input_device_info()["index"]
    except OSError:
        default = -1
    out = []
    for i in range(pa.get_device_count()):
        info = pa.get_device_info_by_index(i)
        if int(info["maxInputChannels"]) > 0:
            api = pa.get_host_api_info_by_index(info["hostApi"])["name"]
            out.append(InputDevice(i, info["name"], int(info["maxInputChannels"]),
                                   float(info["defaultSampleRate"]), api, i == default))
    return out


def describe(devices: list[InputDevice]) -> str:
    """The devices on one line, for error messages."""
    if not devices:
        return "no input devices (is the sound server running, is the user in the 'audio' group?)"
    return "input devices: " + "; ".join(
        f"[{d.index}] {d.name} ({d.max_channels} ch, {d.default_rate:g} Hz)" for d in devices)


def table(devices: list[InputDevice]) -> str:
    """The devices as a text table (``voxd devices``)."""
    rows = [("INDEX", "NAME", "CHANNELS", "DEFAULT RATE", "HOST API")]
    for d in devices:
        rows.append((f"{d.index}{'*' if d.is_default else ''}", d.name, str(d.max_channels),
                     f"{d.default_rate:g}", d.host_api))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(f"{c:<{w}}" for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines + (["* default input device"] if any(d.is_default for d in devices) else []))


def find_device(pa: Any, wanted: str | int | None, what: str = "capture.device") -> InputDevice:
    """Resolve ``capture.device`` (name substring, index, or None for the default) to an input device.

    Raises :class:`VoxdError` (exit 69) naming the available input devices when nothing matches; ``what``
    is the config key the message names.
    """
    devices = input_devices(pa)
    if wanted is None:
        found = [d for d in devices if d.is_default]
        if not found:
            raise VoxdError(f"{what}: no default input device; {describe(devices)}", EX_UNAVAILABLE)
        return found[0]
    if isinstance(wanted, int):
        found = [d for d in devices if d.index == wanted]
    else:
        exact = [d for d in devices if d.name.lower() == wanted.lower()]
        found = exact or [d for d in devices if wanted.lower() in d.name.lower()]
    if not found:
        raise VoxdError(f"{what}: no input device matches {wanted!r}; {describe(devices)}",
                        EX_UNAVAILABLE)
    return found[0]
