"""``voxd config``: the configs and systemd files that ship inside the package.

A device owner who installed the wheel (no repository checkout) starts from these::

    voxd config list                                         # name and what each is for
    voxd config show respeaker-4mic-hat > /etc/voxd/voxd.yaml
    voxd check /etc/voxd/voxd.yaml
    voxd config unit > /etc/systemd/system/voxd.service     # and `voxd config sysusers`

The files are the repository's ``config/*.yaml`` and ``systemd/`` themselves, installed as the data-only
package ``voxd_data`` (``voxd_data.config``, ``voxd_data.systemd``: setup.py says how). :data:`SHIPPED`
names the configs and says what each is for; ``config/demo.yaml`` and ``config/examples/`` stay out of
the wheel: they replay ``demo/respeaker4-kitchen.flac``, a recording in the repository only.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from voxd.config.suggest import did_you_mean
from voxd.errors import EX_SOFTWARE, EX_USAGE, VoxdError

#: config name (its file ``NAME.yaml``) -> what it is for, one line
SHIPPED: dict[str, str] = {
    "default": "4-mic HAT chain for speech recognizers: high-pass, VAD, MVDR beamformer, AGC (what "
               "make install puts in /etc/voxd)",
    "respeaker-4mic-hat": "ReSpeaker 4-Mic Array HAT (AC108, 4 ch): VAD, noise, DOA, MVDR beamformer, Wiener",
    "respeaker-2mic-hat": "ReSpeaker 2-Mics Pi HAT (WM8960, 2 mics 58 mm apart): VAD, noise, DOA, MVDR, "
                          "Wiener",
    "respeaker-6mic": "ReSpeaker 6-Mic Circular Array HAT (8 ch with 2 loopback): echo cancellation, VAD, "
                      "noise, DOA, MVDR, Wiener (aec needs libspeexdsp1)",
    "respeaker-usb-4mic": "ReSpeaker USB Mic Array v2.0, 6-channel firmware: echo cancellation, VAD, noise, "
                          "DOA, MVDR, Wiener (aec needs libspeexdsp1)",
    "mono": "one microphone, for recognizers: Silero VAD, DeepFilterNet3 at 6 dB (needs voxd[dfn3], x86_64)",
    "mono-neural": "one microphone: Silero VAD and the bundled denoiser at full strength",
    "listening": "4-mic HAT chain for listening: MVDR beamformer + DeepFilterNet3 at full strength (needs "
                 "voxd[dfn3], x86_64)",
}

#: the systemd files, by the ``voxd config`` subcommand that prints them
SYSTEMD_FILES = {"unit": "voxd.service", "sysusers": "voxd.sysusers.conf"}

#: the unit's ExecStart runs this (``voxd config unit --voxd PATH`` puts another path there)
UNIT_VOXD = "/usr/bin/voxd"


@dataclass(frozen=True)
class ShippedConfig:
    """One shipped config: ``name`` (``voxd config show NAME``), ``description``, ``path`` (the installed
    file)."""

    name: str
    description: str
    path: str


def data_dir(package: str) -> Path:
    """The installed directory of data package ``voxd_data.<package>`` (``config`` or ``systemd``).

    A namespace package (no ``__init__.py``): its ``__path__`` may also hold the editable finder's
    placeholder, which is not a directory.
    """
    name = f"voxd_data.{package}"
    try:
        module = importlib.import_module(name)
    except ImportError:
        module = None
    for entry in getattr(module, "__path__", []):
        if Path(entry).is_dir():
            return Path(entry)
    raise VoxdError(f"the shipped files ({name}) are not installed: reinstall voxd (pip install voxd-*.whl, "
                    "or pip install -e . in a checkout)", EX_SOFTWARE)


def shipped_configs() -> list[ShippedConfig]:
    """The shipped configs in :data:`SHIPPED` order (the boards first, then the single-mic chains)."""
    base = data_dir("config")
    return [ShippedConfig(name, text, str(base / f"{name}.yaml")) for name, text in SHIPPED.items()]


def _name(wanted: str) -> str:
    """``wanted`` as a :data:`SHIPPED` name (a trailing ``.yaml`` is fine); VoxdError 64 otherwise."""
    name = wanted.removesuffix(".yaml")
    if name in SHIPPED:
        return name
    known = list(SHIPPED)
    longer = [k for k in known if k.startswith(name)]  # 'respeaker-4mic' -> 'respeaker-4mic-hat'
    hint = f" (did you mean '{longer[0]}'?)" if len(longer) == 1 else did_you_mean(name, known)
    raise VoxdError(f"config show: unknown config '{wanted}'{hint}; shipped configs: {', '.join(known)}",
                    EX_USAGE)


def config_text(name: str) -> str:
    """The YAML of shipped config ``name`` (exactly the file)."""
    return (data_dir("config") / f"{_name(name)}.yaml").read_text(encoding="utf-8")


def systemd_text(which: str, voxd: str | None = None) -> str:
    """The systemd file ``which`` (a :data:`SYSTEMD_FILES` key); for the unit, ``voxd`` (a path) replaces
    ``/usr/bin/voxd`` in ``ExecStart=``."""
    text = (data_dir("systemd") / SYSTEMD_FILES[which]).read_text(encoding="utf-8")
    if voxd is not None:
        if not voxd.startswith("/"):
            raise VoxdError(f"config unit: --voxd must be an absolute path (systemd runs it), got '{voxd}'",
                            EX_USAGE)
        text = text.replace(f"ExecStart={UNIT_VOXD} ", f"ExecStart={voxd} ")
    return text


def list_text(configs: list[ShippedConfig], as_json: bool) -> str:
    """``voxd config list``: a table (name, description), or a JSON list of
    ``{"name", "description", "path"}``."""
    if as_json:
        return json.dumps([asdict(c) for c in configs], indent=2)
    width = max(len(c.name) for c in configs)
    lines = [f"{c.name:<{width}}  {c.description}" for c in configs]
    return "\n".join([*lines, "", "voxd config show NAME prints one (e.g. > /etc/voxd/voxd.yaml); "
                      "voxd config unit / sysusers print the systemd files"])
