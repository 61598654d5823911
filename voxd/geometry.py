"""Microphone array geometry: the named presets and their positions (a leaf: imports nothing from voxd;
the config model resolves an ``array`` section with it).

Positions are numpy float64 ``(M, 3)`` arrays in metres relative to the array centre, row *i* being
the microphone of chain channel *i* (as the channels reach the stage that uses them, i.e. after any
``select``). Azimuths are degrees counter-clockwise from +x in the array plane, z up.

The circular presets' channel order and angles match the shared benchmark's metadata
(``mic_positions`` in ``bench/dev/array/meta.jsonl``); their coordinates are rounded to 10 µm, the
precision of that metadata (and far below the boards' mechanical tolerance). The benchmark has no
2-mic HAT: its preset's source is given where it is defined.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: speed of sound (m/s) at about 20 °C: the default of ``array.speed_of_sound``
SPEED_OF_SOUND = 343.0

#: name of the parametric preset: ``count`` microphones on x, ``spacing`` metres apart
LINEAR = "linear"

CIRCLE_DECIMALS = 5  # 10 µm: the circular presets' coordinates as the benchmark metadata gives them
LINEAR_DECIMALS = 9  # 1 nm: only removes float noise from the linear layout's multiples of the spacing


@dataclass(frozen=True)
class Preset:
    """A named array geometry.

    ``radius_m``: circle radius (m) and ``angles_deg``: each channel's mic azimuth (deg), for a
    circular preset; both unset for the parametric ``linear`` preset (``count``/``spacing`` from the
    config).
    """

    name: str
    description: str
    radius_m: float | None = None
    angles_deg: tuple[float, ...] = ()

    @property
    def parametric(self) -> bool:
        """True when the layout comes from ``count`` and ``spacing`` rather than from the preset."""
        return self.radius_m is None


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("respeaker-4mic-hat", "ReSpeaker 4-Mic Array HAT for Raspberry Pi: 4 mics on a 40.5 mm "
               "radius circle", 0.0405, (180.0, 90.0, 0.0, 270.0)),
        Preset("respeaker-usb-4mic", "ReSpeaker USB 4 Mic Array: 4 mics on a 32 mm radius circle",
               0.032, (180.0, 270.0, 0.0, 90.0)),
        Preset("respeaker-6mic", "ReSpeaker 6-Mic Circular Array HAT: 6 mics on a 46.3 mm radius circle",
               0.0463, (120.0, 180.0, 240.0, 300.0, 0.0, 60.0)),
        # Two mics on the board's left and right edges (wiki.seeedstudio.com/ReSpeaker_2_Mics_Pi_HAT:
        # "MIC_L and MIC_R: 2 microphones on both sides of the board"), 58 mm apart: MIC_DISTANCE = 0.058
        # in voice_engine/doa_respeaker_2mic_hat.py of github.com/voice-engine/voice-engine (written for
        # Seeed's ReSpeaker boards), whose 4-mic HAT figure (doa_respeaker_4mic_array.py: 0.081 between
        # opposite mics) matches the respeaker-4mic-hat preset's 2 x 40.5 mm. As a "circle" of radius 29 mm
        # with mics at 180 and 0 deg it is the line x = -29, +29 mm; channel 0 (the codec's left, by the
        # names MIC_L) at -x. A swapped pair only mirrors doa_deg (az -> 180 - az).
        Preset("respeaker-2mic-hat", "ReSpeaker 2-Mics Pi HAT: 2 mics 58 mm apart on x (channel 0 at -x, "
               "the board's left)", 0.029, (180.0, 0.0)),
        Preset(LINEAR, "count mics along x, spacing metres apart, centred, channel 0 at the most negative x"),
    )
}


def _clean(a: np.ndarray, decimals: int) -> np.ndarray:
    # Round away float noise (cos 90° = 6e-17), and add 0.0 so that -0.0 becomes 0.0.
    return np.round(a, decimals) + 0.0


def circle_positions(radius_m: float, angles_deg: tuple[float, ...] | list[float]) -> np.ndarray:
    """Mics on a circle of ``radius_m`` (m) in the z = 0 plane at ``angles_deg`` (deg, one per channel).

    Returns float64 ``(len(angles_deg), 3)`` (m), rounded to 10 µm.
    """
    a = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    xyz = np.stack([radius_m * np.cos(a), radius_m * np.sin(a), np.zeros_like(a)], axis=1)
    return _clean(xyz, CIRCLE_DECIMALS)


def linear_positions(count: int, spacing: float) -> np.ndarray:
    """``count`` mics on the x axis, ``spacing`` (m) apart, centred on the origin, channel 0 at the
    most negative x. Returns float64 ``(count, 3)`` (m)."""
    x = (np.arange(count, dtype=np.float64) - (count - 1) / 2) * spacing
    return _clean(np.stack([x, np.zeros_like(x), np.zeros_like(x)], axis=1), LINEAR_DECIMALS)


def preset_positions(name: str, count: int | None = None, spacing: float | None = None) -> np.ndarray:
    """Positions float64 ``(M, 3)`` (m) of preset ``name``; ``count`` and ``spacing`` (m) are for
    ``linear`` only (required there, refused elsewhere).

    Raises ``ValueError`` for an unknown name or wrong ``count``/``spacing``.
    """
    preset = PRESETS.get(name)
    if preset is None:
        raise ValueError(f"unknown array preset '{name}'; known presets: {', '.join(sorted(PRESETS))}")
    if not preset.parametric:
        if count is not None or spacing is not None:
            raise ValueError(f"count and spacing are only for preset '{LINEAR}', not '{name}'")
        assert preset.radius_m is not None
        return circle_positions(preset.radius_m, preset.angles_deg)
    if count is None or spacing is None:
        raise ValueError(f"preset '{LINEAR}' needs count and spacing")
    if count < 2 or not spacing > 0:
        raise ValueError(f"preset '{LINEAR}' needs count >= 2 and spacing > 0, got {count} and {spacing:g}")
    return linear_positions(count, spacing)


def mic_azimuths_deg(positions: np.ndarray) -> np.ndarray:
    """Azimuth (deg, in [0, 360), counter-clockwise from +x) of each row of ``positions`` ``(M, 3)``,
    seen from the origin in the x-y plane. Returns float64 ``(M,)``; a mic at the centre gets 0."""
    p = np.asarray(positions, dtype=np.float64)
    az = np.rad2deg(np.arctan2(p[:, 1], p[:, 0]))
    return np.round(np.mod(az, 360.0), 9) % 360.0  # -1e-15 would otherwise give 360.0


def max_delay_s(positions: np.ndarray, c: float = SPEED_OF_SOUND) -> float:
    """Largest time difference of arrival between two mics: max |p_i - p_j| / ``c`` (s), ``c`` in m/s.

    ``positions``: ``(M, 3)`` (m). 0.0 for fewer than two mics.
    """
    p = np.asarray(positions, dtype=np.float64)
    if p.shape[0] < 2:
        return 0.0
    d = np.linalg.norm(p[:, None, :] - p[None, :, :], axis=-1)
    return float(d.max() / c)
