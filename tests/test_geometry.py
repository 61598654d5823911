"""Array geometry: the presets (checked against the shared benchmark), the ``array`` section's rules,
explicit positions winning over a preset, and the chain builder's geometry checks (in the loader and
through ``voxd check``)."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from voxd_basic.channels import Select

from voxd.chain import build_chain
from voxd.config import LoadedConfig, config_json_schema, load_config_text
from voxd.errors import EX_CONFIG, ConfigError
from voxd.geometry import (
    LINEAR,
    PRESETS,
    SPEED_OF_SOUND,
    max_delay_s,
    mic_azimuths_deg,
    preset_positions,
)
from voxd.hookspecs import hookimpl
from voxd.plugins import Plugins, StageRegistry, load_plugins
from voxd.runtime import open_chain
from voxd.stage import Stage, StageContext

BENCH_META = Path(__file__).resolve().parents[2] / "shared" / "bench" / "dev" / "array" / "meta.jsonl"

#: radius (m) and mic azimuth (deg) by channel: the benchmark's layouts, written out so that these
#: tests do not depend on the benchmark being present
EXPECTED = {
    "respeaker-4mic-hat": (0.0405, [180, 90, 0, 270]),
    "respeaker-usb-4mic": (0.032, [180, 270, 0, 90]),
    "respeaker-6mic": (0.0463, [120, 180, 240, 300, 0, 60]),
    "respeaker-2mic-hat": (0.029, [180, 0]),  # not in the benchmark: Seeed's 58 mm (voxd/geometry.py)
}


# --- a test plugin: a geometry stage, and the real select -------------------------------------------


class Geo(Stage):
    """Test stage that uses the array geometry; remembers the context it was opened with."""

    kind = "geo"
    needs_geometry = True
    opened: StageContext | None = None

    def open(self, ctx: StageContext) -> None:
        Geo.opened = ctx


@hookimpl
def voxd_register_stages(registry: StageRegistry) -> None:
    for cls in (Geo, Select):
        registry.add(cls)


@pytest.fixture(scope="module")
def plugins() -> Plugins:
    """This module's stages only (the installed plugins are blocked)."""
    installed = [ep.name for ep in md.entry_points(group="voxd")]
    return load_plugins(disable=installed, extra=[("geotest", sys.modules[__name__])])


def load(text: str, plugins: Plugins, overrides: tuple[str, ...] = ()) -> LoadedConfig:
    return load_config_text(f"capture: {{path: a.wav}}\n{text}", "v.yaml", overrides, plugins)


def errors(text: str, plugins: Plugins, overrides: tuple[str, ...] = ()) -> list[str]:
    """The lines of the ConfigError that loading ``text`` must raise."""
    with pytest.raises(ConfigError) as info:
        load(text, plugins, overrides)
    assert info.value.exit_status == EX_CONFIG
    return info.value.lines


def chain_errors(loaded: LoadedConfig, channels: int) -> list[str]:
    """The lines of the ConfigError that building the chain for ``channels`` inputs must raise."""
    with pytest.raises(ConfigError) as info:
        build_chain(loaded, channels)
    assert info.value.exit_status == EX_CONFIG
    return info.value.lines


# --- the presets ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_circular_presets_have_the_documented_radius_and_angles(name: str) -> None:
    radius, angles = EXPECTED[name]
    p = preset_positions(name)
    a = np.deg2rad(angles)
    expected = np.stack([radius * np.cos(a), radius * np.sin(a), np.zeros(len(a))], axis=1)
    assert p.dtype == np.float64 and p.shape == (len(angles), 3)
    np.testing.assert_allclose(p, expected, atol=1e-5)  # rounded to 10 µm
    np.testing.assert_allclose(np.linalg.norm(p, axis=1), radius, atol=1e-5)
    np.testing.assert_allclose(mic_azimuths_deg(p), angles, atol=0.01)
    assert PRESETS[name].radius_m == radius and list(PRESETS[name].angles_deg) == angles
    assert not np.signbit(p[p == 0]).any()  # no -0.0


def test_presets_match_the_bench_metadata() -> None:
    if not BENCH_META.exists():
        pytest.skip(f"{BENCH_META} not present")
    seen = set()
    for line in BENCH_META.read_text().splitlines():
        meta = json.loads(line)
        name = meta["geometry"]
        positions = preset_positions(name)
        np.testing.assert_allclose(positions, meta["mic_positions"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(mic_azimuths_deg(positions), meta["mic_angles_deg"], atol=0.01)
        assert PRESETS[name].radius_m == meta["array_radius_m"]
        seen.add(name)
    assert seen  # the file lists at least one array


def test_every_preset_has_a_one_line_description() -> None:
    assert set(PRESETS) == {*EXPECTED, LINEAR}
    for preset in PRESETS.values():
        assert preset.description and "\n" not in preset.description


def test_linear_layout() -> None:
    p = preset_positions(LINEAR, count=4, spacing=0.05)
    np.testing.assert_array_equal(p, [[-0.075, 0, 0], [-0.025, 0, 0], [0.025, 0, 0], [0.075, 0, 0]])
    np.testing.assert_array_equal(preset_positions(LINEAR, 3, 0.04)[:, 0], [-0.04, 0.0, 0.04])
    middle = preset_positions(LINEAR, 3, 0.04)
    assert not np.signbit(middle[middle == 0]).any()  # no -0.0
    np.testing.assert_allclose(mic_azimuths_deg(p), [180, 180, 0, 0])
    assert max_delay_s(p) == pytest.approx(0.15 / 343.0)
    assert max_delay_s(p, c=300.0) == pytest.approx(0.15 / 300.0)


def test_preset_positions_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown array preset 'nope'; known presets: linear, respeaker"):
        preset_positions("nope")
    with pytest.raises(ValueError, match="needs count and spacing"):
        preset_positions(LINEAR, count=4)
    with pytest.raises(ValueError, match="only for preset 'linear'"):
        preset_positions("respeaker-6mic", spacing=0.05)


def test_the_2mic_hat_is_a_58mm_line_with_channel_0_on_the_left() -> None:
    p = preset_positions("respeaker-2mic-hat")
    np.testing.assert_array_equal(p, [[-0.029, 0, 0], [0.029, 0, 0]])
    assert max_delay_s(p) == pytest.approx(0.058 / 343.0)


def test_max_delay_of_the_4mic_hat_is_its_diameter() -> None:
    assert max_delay_s(preset_positions("respeaker-4mic-hat")) == pytest.approx(0.081 / 343.0)
    assert max_delay_s(np.zeros((1, 3))) == 0.0


# --- the array section ------------------------------------------------------------------------------


def test_preset_resolves_and_speed_of_sound_defaults(plugins: Plugins) -> None:
    loaded = load("array: {preset: respeaker-6mic}\n", plugins)
    np.testing.assert_array_equal(loaded.config.mic_positions(), preset_positions("respeaker-6mic"))
    assert loaded.config.speed_of_sound == SPEED_OF_SOUND == 343.0
    no_array = load("", plugins)
    assert no_array.config.mic_positions() is None and no_array.config.speed_of_sound == 343.0
    assert no_array.config.array is None


def test_linear_preset_from_the_config(plugins: Plugins) -> None:
    loaded = load("array: {preset: linear, count: 2, spacing: 0.1, speed_of_sound: 340}\n", plugins)
    np.testing.assert_array_equal(loaded.config.mic_positions(), [[-0.05, 0, 0], [0.05, 0, 0]])
    assert loaded.config.speed_of_sound == 340


def test_explicit_positions_win_over_the_preset(plugins: Plugins) -> None:
    # as the benchmark runs it: a preset config, positions given with --set
    override = "array.positions=[[0.1,0,0],[0,0.1,0],[-0.1,0,0]]"
    loaded = load("array:\n  preset: respeaker-4mic-hat\n", plugins, (override,))
    positions = loaded.config.mic_positions()
    assert positions is not None and positions.dtype == np.float64
    np.testing.assert_array_equal(positions, [[0.1, 0, 0], [0, 0.1, 0], [-0.1, 0, 0]])
    # both in the file is fine too
    both = load("array:\n  preset: respeaker-6mic\n  positions: [[0, 0, 0], [0.1, 0, 0]]\n", plugins)
    np.testing.assert_array_equal(both.config.mic_positions(), [[0, 0, 0], [0.1, 0, 0]])


def test_unknown_preset(plugins: Plugins) -> None:
    assert errors("array:\n  preset: respeaker-4mic\n", plugins) == [
        "v.yaml:3: array.preset: unknown preset 'respeaker-4mic' (did you mean 'respeaker-4mic-hat'?); "
        "known presets: linear, respeaker-2mic-hat, respeaker-4mic-hat, respeaker-6mic, respeaker-usb-4mic"
    ]
    assert errors("", plugins, ("array.preset=ring",)) == [
        "--set array.preset=ring: array.preset: unknown preset 'ring'; "
        "known presets: linear, respeaker-2mic-hat, respeaker-4mic-hat, respeaker-6mic, respeaker-usb-4mic"
    ]


@pytest.mark.parametrize(
    ("array", "line"),
    [
        ("{preset: linear, count: 4}",
         "v.yaml:2: array.spacing: required for preset 'linear' (metres between microphones)"),
        ("{preset: linear}",
         "v.yaml:2: array.count: required for preset 'linear' (number of microphones), as is array.spacing "
         "(metres between microphones)"),
        ("{preset: linear, count: 1, spacing: 0.05}",
         "v.yaml:2: array.count: Input should be greater than or equal to 2"),
        ("{preset: linear, count: 3, spacing: 0}", "v.yaml:2: array.spacing: Input should be greater than 0"),
        ("{preset: respeaker-6mic, spacing: 0.05}",
         "v.yaml:2: array.spacing: only used by preset 'linear', not 'respeaker-6mic'"),
        ("{positions: [[0, 0, 0]], count: 1}",
         "v.yaml:2: array.count: Input should be greater than or equal to 2"),
        ("{positions: [[0, 0, 0]], count: 2}",
         "v.yaml:2: array.count: only used by preset 'linear', and array.preset is not given"),
        ("{speed_of_sound: 34300}",
         "v.yaml:2: array.speed_of_sound: Input should be less than or equal to 400"),
        ("{speed_of_sound: 343}", "v.yaml:2: array: give array.preset or array.positions"),
    ],
)
def test_array_section_rules(plugins: Plugins, array: str, line: str) -> None:
    assert errors(f"array: {array}\n", plugins) == [line]


def test_schema_lists_the_presets(plugins: Plugins) -> None:
    props = config_json_schema(plugins)["$defs"]["ArrayConfig"]["properties"]
    assert props["preset"]["anyOf"][0]["enum"] == sorted(PRESETS)
    assert {"positions", "count", "spacing", "speed_of_sound"} <= set(props)


# --- the chain builder ------------------------------------------------------------------------------


def test_geometry_stage_without_array_section(plugins: Plugins) -> None:
    loaded = load("chain:\n  - {stage: geo, name: bf}\n", plugins)
    assert chain_errors(loaded, 4) == [
        "v.yaml:3: chain.0: stage 'bf' (geo) needs the array geometry: add an 'array' section (preset or "
        "positions)"
    ]


def test_geometry_stage_channel_count_mismatch(plugins: Plugins) -> None:
    loaded = load("array: {preset: respeaker-4mic-hat}\nchain:\n  - {stage: geo, name: bf}\n", plugins)
    assert chain_errors(loaded, 6) == [
        "v.yaml:4: chain.0: stage 'bf' (geo) gets 6 channels but the array (v.yaml:2) has 4 microphone "
        "positions"
    ]


def test_channel_count_is_the_one_reaching_the_stage(plugins: Plugins) -> None:
    # 6 captured channels, 4 selected: the 4 positions describe the selected ones
    text = "array:\n  preset: respeaker-4mic-hat\nchain:\n  - {stage: select, channels: [0, 1, 2, 3]}\n"
    chain = build_chain(load(text + "  - {stage: geo}\n", plugins), 6)
    assert [n.name for n in chain.nodes] == ["select", "geo"]
    # 3 selected: an error at the geometry stage, pointing at the positions that win over the preset;
    # the second geometry stage has no known input format after that, and the array is there: no error
    text3 = text.replace("[0, 1, 2, 3]", "[0, 1, 2]") + "  - {stage: geo}\n  - {stage: geo}\n"
    override = "array.positions=[[0.1,0,0],[0,0.1,0]]"
    assert chain_errors(load(text3, plugins, (override,)), 6) == [
        f"v.yaml:6: chain.1: stage 'geo' (geo) gets 3 channels but the array (--set {override}) has 2 "
        "microphone positions"
    ]


def test_both_geometry_errors_are_reported_together(plugins: Plugins) -> None:
    text = ("chain:\n  - {stage: geo, name: doa}\n  - {stage: select, channels: [0]}\n"
            "  - {stage: geo, name: bf}\n")
    assert chain_errors(load(text, plugins), 4) == [
        "v.yaml:3: chain.0: stage 'doa' (geo) needs the array geometry: add an 'array' section (preset or "
        "positions)",
        "v.yaml:5: chain.2: stage 'bf' (geo) needs the array geometry: add an 'array' section (preset or "
        "positions)",
    ]


def test_open_gives_the_stage_positions_and_speed_of_sound(plugins: Plugins) -> None:
    loaded = load("array: {preset: linear, count: 3, spacing: 0.05, speed_of_sound: 350}\n"
                  "chain: [{stage: geo}]\n", plugins)
    chain = build_chain(loaded, 3)
    open_chain(loaded, chain)
    ctx = Geo.opened
    assert ctx is not None and ctx.speed_of_sound == 350
    assert ctx.positions is not None
    np.testing.assert_array_equal(ctx.positions, preset_positions(LINEAR, 3, 0.05))
    assert StageContext(rate=16000).speed_of_sound == 343.0


# --- through the command ----------------------------------------------------------------------------

PLUGIN_MODULE = '''
from voxd.hookspecs import hookimpl
from voxd.stage import Stage


class Beam(Stage):
    """A stage that needs the array geometry."""

    kind = "beam"
    needs_geometry = True


@hookimpl
def voxd_register_stages(registry):
    registry.add(Beam)
'''


def test_check_reports_a_channel_mismatch_in_one_line(voxd, recording, tmp_path: Path) -> None:
    # A plugin distribution on PYTHONPATH: a module and its dist-info with the voxd entry point.
    site = tmp_path / "site"
    dist = site / "voxd_geo_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (site / "voxd_geo_plugin.py").write_text(PLUGIN_MODULE)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: voxd-geo-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[voxd]\ngeo = voxd_geo_plugin\n")
    path = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env = {"PYTHONPATH": path, "VOXD_DISABLE_PLUGINS": "extra,broken,vad,noise,denoise,array"}
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"capture: {{type: file, path: {recording}}}\narray: {{preset: respeaker-6mic}}\n"
                   "chain:\n  - {stage: beam, name: bf}\n")
    r = voxd("check", str(cfg), env=env)
    assert r.returncode == 78, r.stderr
    assert r.stderr.strip() == (f"{cfg}:4: chain.0: stage 'bf' (beam) gets 4 channels but the array "
                                f"({cfg}:2) has 6 microphone positions")
    assert len(r.stderr.splitlines()) == 1 and r.stdout == ""
    ok = voxd("check", str(cfg), "--set", "array.preset=respeaker-4mic-hat", env=env)
    assert ok.returncode == 0, ok.stderr
