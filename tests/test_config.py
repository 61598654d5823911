"""Config loading: every class of mistake gives one exact, located line; valid configs resolve."""

from __future__ import annotations

import importlib.metadata as md
import sys
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import Field, ValidationInfo, field_validator

from voxd.config import LoadedConfig, config_json_schema, load_config
from voxd.errors import EX_CONFIG, ConfigError
from voxd.hookspecs import hookimpl
from voxd.plugins import PluginInfo, Plugins, StageRegistry, load_plugins
from voxd.stage import Stage, StageParams

DATA = Path(__file__).parent / "data" / "config"


# --- a small test plugin: this module registers these stages -----------------------------------


class Highpass(Stage):
    """Test high-pass filter."""

    kind = "highpass"

    class Params(StageParams):
        cutoff_hz: float = Field(100.0, gt=0, description="Cutoff frequency (Hz).")

        @field_validator("cutoff_hz")
        @classmethod
        def _below_nyquist(cls, v: float, info: ValidationInfo) -> float:
            rate = (info.context or {}).get("rate")
            if rate and v >= rate / 2:
                raise ValueError(f"must be below Nyquist ({rate / 2:g} Hz)")
            return v


class Gain(Stage):
    """Test gain."""

    kind = "gain"

    class Params(StageParams):
        db: float = Field(0.0, description="Gain (dB).")


class Denoise(Stage):
    """Test denoiser with a union-typed parameter."""

    kind = "denoise"

    class Params(StageParams):
        attenuation_limit_db: float | Literal["off"] = Field(30.0, description="Maximum attenuation (dB).")


@hookimpl
def voxd_register_stages(registry: StageRegistry) -> None:
    for cls in (Highpass, Gain, Denoise):
        registry.add(cls)


class _Broken:
    """A plugin whose hook raises, as an import error would."""

    @hookimpl
    def voxd_register_stages(self, registry: StageRegistry) -> None:
        raise ImportError("No module named 'onnxruntime'")


def installed() -> list[str]:
    """Names of the installed voxd plugins: blocked in tests so that only test stages exist."""
    return [ep.name for ep in md.entry_points(group="voxd")]


@pytest.fixture(scope="module")
def plugins() -> Plugins:
    """This module's stages only."""
    return load_plugins(disable=installed(), extra=[("testplug", sys.modules[__name__])])


@pytest.fixture(scope="module")
def plugins_with_failure() -> Plugins:
    """A registry like :func:`plugins` plus one plugin that failed to load."""
    registry = StageRegistry()
    for cls in (Highpass, Gain, Denoise):
        registry.add(cls)
    failed = PluginInfo("broken", "broken", "1.0", status="failed", error="ImportError: No module named 'x'")
    return Plugins(registry, [failed])


def errors(path: Path | str, plugins: Plugins, overrides: tuple[str, ...] = ()) -> list[str]:
    """The lines of the ConfigError that loading must raise (checking its exit status)."""
    with pytest.raises(ConfigError) as info:
        load_config(str(path), overrides, plugins)
    assert info.value.exit_status == EX_CONFIG == 78
    return info.value.lines


def write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "voxd.yaml"
    p.write_text(text)
    return str(p)


# --- one test per class of mistake ---------------------------------------------------------------


def test_unknown_key_has_did_you_mean(plugins: Plugins) -> None:
    f = DATA / "unknown_key.yaml"
    assert errors(f, plugins) == [
        f"{f}:5: chain.0.cuttoff_hz: unknown key 'cuttoff_hz' (did you mean 'cutoff_hz'?)"
    ]


def test_unknown_key_without_close_match_has_no_hint(tmp_path: Path, plugins: Plugins) -> None:
    f = write(tmp_path, "capture: {path: a.wav}\noutput:\n  zzz: 1\n")
    assert errors(f, plugins) == [f"{f}:3: output.zzz: unknown key 'zzz'"]


def test_misspelt_stage_lists_installed_and_failed_plugins(plugins_with_failure: Plugins) -> None:
    f = DATA / "bad_stage.yaml"
    assert errors(f, plugins_with_failure) == [
        f"{f}:5: chain.1.stage: unknown stage 'higpass' (did you mean 'highpass'?); "
        "installed: denoise, gain, highpass; "
        "plugins that failed to load: broken (ImportError: No module named 'x')"
    ]


def test_failed_plugin_error_comes_from_plugin_loading(tmp_path: Path) -> None:
    loaded = load_plugins(disable=installed(), extra=[("broken", _Broken())])
    f = write(tmp_path, "capture: {path: a.wav}\nchain:\n  - stage: denoise\n")
    assert errors(f, loaded) == [
        f"{f}:3: chain.0.stage: unknown stage 'denoise'; installed: (none); "
        "plugins that failed to load: broken (ImportError: No module named 'onnxruntime')"
    ]


def test_wrong_type(plugins: Plugins) -> None:
    f = DATA / "wrong_type.yaml"
    assert errors(f, plugins) == [
        f"{f}:6: chain.1.db: Input should be a valid number, unable to parse string as a number"
    ]


def test_out_of_range(plugins: Plugins) -> None:
    f = DATA / "out_of_range.yaml"
    assert errors(f, plugins) == [f"{f}:4: processing.rate: Input should be less than or equal to 48000"]


def test_duplicate_key(plugins: Plugins) -> None:
    f = DATA / "dup.yaml"
    assert errors(f, plugins) == [f"{f}:7: output.format: duplicate key (first at line 5)"]


def test_yaml_syntax_error(plugins: Plugins) -> None:
    f = DATA / "syntax.yaml"
    assert errors(f, plugins) == [f"{f}:6: yaml: expected ',' or ']', but got ':'"]


def test_missing_stage_key_points_at_the_entry(plugins: Plugins) -> None:
    f = DATA / "missing_stage.yaml"
    assert errors(f, plugins) == [f"{f}:6: chain.2: missing key 'stage'"]


def test_missing_required_capture_path_points_at_capture(tmp_path: Path, plugins: Plugins) -> None:
    f = write(tmp_path, "log: {level: info}\ncapture:\n  realtime: false\n")
    assert errors(f, plugins) == [f"{f}:2: capture.path: required for capture.type 'file'"]


def test_override_error_names_the_override(plugins: Plugins) -> None:
    f = DATA / "good.yaml"
    assert errors(f, plugins, ("chain.1.db=loud",)) == [
        "--set chain.1.db=loud: chain.1.db: "
        "Input should be a valid number, unable to parse string as a number"
    ]


def test_malformed_and_out_of_range_overrides(plugins: Plugins) -> None:
    f = DATA / "good.yaml"
    assert errors(f, plugins, ("foo", "chain.9.db=1", "capture.path.x=1", "log.level=[1")) == [
        "--set foo: expected PATH=VALUE",
        "--set chain.9.db=1: chain.9: index 9 is past the end of the list (4 entries)",
        "--set capture.path.x=1: capture.path: is a string, it has no key 'x'",
        "--set log.level=[1: yaml: expected ',' or ']', but got '<stream end>'",
    ]


def test_several_errors_collected_in_line_order(plugins: Plugins) -> None:
    f = DATA / "many.yaml"
    assert errors(f, plugins, ("log.level=loud",)) == [
        f"{f}:1: capture.path: required for capture.type 'file'",
        f"{f}:4: processing.hop_ms: window_ms / hop_ms must be a whole number >= 2, got 1.33333",
        f"{f}:7: chain.0.cutoff_hz: Input should be greater than 0",
        f"{f}:11: chain.2.name: duplicate stage name 'g' (first at chain.1)",
        f"{f}:12: chain.2.on_error: Input should be 'bypass', 'reset' or 'fail'",
        f"{f}:14: output.endpoints.0: must start with tcp://, ipc:// or inproc://, got 'udp://0.0.0.0:9'",
        f"{f}:15: output.hwm: Input should be greater than or equal to 1",
        f"{f}:16: output.fromat: unknown key 'fromat' (did you mean 'format'?)",
        f"{f}:17: loging: unknown key 'loging' (did you mean 'log'?)",
        "--set log.level=loud: log.level: Input should be 'debug', 'info', 'warning' or 'error'",
    ]


def test_union_tags_never_appear_in_paths(tmp_path: Path, plugins: Plugins) -> None:
    text = "capture: {path: a.wav}\nchain:\n  - stage: denoise\n    attenuation_limit_db: loud\n"
    f = write(tmp_path, text)
    assert errors(f, plugins) == [
        f"{f}:4: chain.0.attenuation_limit_db: Input should be a valid number, unable to parse string as a "
        "number or Input should be 'off'"
    ]


RATIO = "window_ms / hop_ms must be a whole number >= 2"


@pytest.mark.parametrize(
    ("processing", "line"),
    [
        ("{window_ms: 25, hop_ms: 10}", f"processing.hop_ms: {RATIO}, got 2.5"),
        ("{window_ms: 10, hop_ms: 10}", f"processing.hop_ms: {RATIO}, got 1"),
        ("{rate: 44100, window_ms: 20.02, hop_ms: 10.01}",
         "processing.hop_ms: 10.01 ms is not a whole number of samples at 44100 Hz"),
        ("{window: hann}", "processing.window: Input should be 'sqrt-hann'"),
    ],
)
def test_processing_rules(tmp_path: Path, plugins: Plugins, processing: str, line: str) -> None:
    f = write(tmp_path, f"capture: {{path: a.wav}}\nprocessing: {processing}\n")
    assert errors(f, plugins) == [f"{f}:2: {line}"]


def test_array_rows_are_xyz_and_stage_params_see_the_rate(tmp_path: Path, plugins: Plugins) -> None:
    text = "capture: {path: a.wav}\narray:\n  positions: [[0, 0, 0], [0.1, 0]]\nchain:\n  - stage: highpass\n"
    f = write(tmp_path, text)
    assert errors(f, plugins, ("chain.0.cutoff_hz=9000",)) == [
        f"{f}:3: array.positions.1: each position must be [x, y, z] in metres, got 2 numbers",
        "--set chain.0.cutoff_hz=9000: chain.0.cutoff_hz: must be below Nyquist (8000 Hz)",
    ]


def test_taps_must_name_chain_stages(plugins: Plugins) -> None:
    f = DATA / "good.yaml"
    assert errors(f, plugins, ("output.taps=[gian]",)) == [
        "--set output.taps=[gian]: output.taps.0: no stage named 'gian' in the chain (did you mean 'gain'?); "
        "names: highpass, gain, gain-2, hp-late"
    ]


def test_top_level_must_be_a_mapping(tmp_path: Path, plugins: Plugins) -> None:
    f = write(tmp_path, "- capture\n- chain\n")
    assert errors(f, plugins) == [f"{f}:1: (top level): must be a mapping of sections, got a list"]


def test_unreadable_file(tmp_path: Path, plugins: Plugins) -> None:
    f = str(tmp_path / "nope.yaml")
    assert errors(f, plugins) == [f"{f}: cannot read config: No such file or directory"]


# --- valid configs -------------------------------------------------------------------------------


def test_defaults(tmp_path: Path, plugins: Plugins) -> None:
    cfg = load_config(write(tmp_path, "capture:\n  path: a.wav\n"), (), plugins).config
    c = cfg.capture
    assert (c.type, c.path, c.realtime, c.loop) == ("file", str(tmp_path / "a.wav"), True, False)
    p = cfg.processing
    assert (p.rate, p.window_ms, p.hop_ms, p.window) == (16000, 20, 10, "sqrt-hann")
    assert (p.window_samples, p.hop_samples) == (320, 160)
    assert cfg.array is None
    o = cfg.output
    assert o.endpoints == ["tcp://127.0.0.1:7700"]
    assert (o.format, o.frame_ms, o.hwm, o.taps, o.stats_interval_s, o.wait_for_subscriber_s) == (
        "s16le", 20, 1000, [], 5, 0
    )
    assert cfg.log.level == "info"
    assert cfg.chain == []


def test_a_relative_capture_path_is_relative_to_the_config_file(tmp_path: Path, plugins: Plugins,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    monkeypatch.chdir(tmp_path)
    write(etc, "capture: {path: rec/a.wav}\n")
    # the file's directory, as the file was named
    assert load_config("etc/voxd.yaml", (), plugins).config.capture.path == "etc/rec/a.wav"
    assert load_config(str(etc / "voxd.yaml"), (), plugins).config.capture.path == str(etc / "rec/a.wav")
    write(etc, "capture: {path: /data/a.wav}\n")
    assert load_config("etc/voxd.yaml", (), plugins).config.capture.path == "/data/a.wav"
    # --set: relative to the working directory, where the shell that typed it is
    for override in ("capture.path=b.wav", "capture={type: file, path: b.wav}"):
        assert load_config("etc/voxd.yaml", (override,), plugins).config.capture.path == "b.wav"
    # the loaded tree keeps what the file says (a reload compares configs, which resolve alike)
    assert load_config("etc/voxd.yaml", (), plugins).raw["capture"]["path"] == "/data/a.wav"
    # a config in the working directory: nothing to join
    cwd = tmp_path / "cwd.yaml"
    cwd.write_text("capture: {path: a.wav}\n")
    assert load_config("cwd.yaml", (), plugins).config.capture.path == "a.wav"


def test_good_file_resolves_names_and_params(plugins: Plugins) -> None:
    loaded = load_config(str(DATA / "good.yaml"), (), plugins)
    chain = loaded.config.chain
    assert [(s.index, s.kind, s.name, s.on_error) for s in chain] == [
        (0, "highpass", "highpass", "reset"),
        (1, "gain", "gain", "reset"),
        (2, "gain", "gain-2", "bypass"),
        (3, "highpass", "hp-late", "reset"),
    ]
    assert chain[0].cls is Highpass and chain[0].params == Highpass.Params(cutoff_hz=120)
    assert chain[1].params.db == -3  # type: ignore[attr-defined]
    assert loaded.config.output.taps == ["highpass", "gain-2"]
    array = loaded.config.array
    assert array is not None and array.positions == [[0.032, 0, 0], [-0.032, 0, 0]]


def test_default_names_skip_explicit_ones(tmp_path: Path, plugins: Plugins) -> None:
    chain = "[{stage: gain}, {stage: gain, name: gain}, {stage: gain}]"
    f = write(tmp_path, f"capture: {{path: a.wav}}\nchain: {chain}\n")
    assert [s.name for s in load_config(f, (), plugins).config.chain] == ["gain-2", "gain", "gain-3"]


def test_overrides_are_applied_and_remember_their_origin(plugins: Plugins) -> None:
    f = str(DATA / "good.yaml")
    overrides = (
        "array.positions=[[0.04,0,0],[0,0.04,0]]",
        "capture.realtime=true",
        "chain.1.db=6",
        "output.endpoints=[ipc:///run/voxd.sock]",
        "log={level: warning}",
    )
    loaded = load_config(f, overrides, plugins)
    cfg = loaded.config
    assert cfg.array is not None and cfg.array.positions == [[0.04, 0, 0], [0, 0.04, 0]]
    assert cfg.capture.realtime is True
    assert cfg.chain[1].params.db == 6  # type: ignore[attr-defined]
    assert cfg.output.endpoints == ["ipc:///run/voxd.sock"]
    assert cfg.log.level == "warning"
    assert loaded.raw["chain"][1]["db"] == 6
    assert loaded.where(("chain", 1, "db")) == "--set chain.1.db=6"
    assert loaded.where(("log", "level")) == "--set log={level: warning}"
    assert loaded.where(("chain", 1)) == f"{f}:17"
    assert loaded.where(("chain", 2, "nothing", 0)) == f"{f}:19"  # nearest ancestor
    assert loaded.error(("chain", 3), "cannot take 4 ch") == f"{f}:21: chain.3: cannot take 4 ch"


def test_override_creates_missing_mappings(tmp_path: Path, plugins: Plugins) -> None:
    f = write(tmp_path, "capture: {path: a.wav}\n")
    loaded = load_config(f, ("output.hwm=5", "array.preset=respeaker-6mic"), plugins)
    assert loaded.config.output.hwm == 5
    assert loaded.config.array is not None and loaded.config.array.preset == "respeaker-6mic"
    assert loaded.where(("array",)) == "--set array.preset=respeaker-6mic"


def test_merge_keys_and_scratch_sections(tmp_path: Path, plugins: Plugins) -> None:
    text = (
        "x-hp: &hp {stage: highpass, cutoff_hz: 80}\n"
        "capture: {path: a.wav}\n"
        "chain:\n  - <<: *hp\n    name: a\n"
    )
    loaded = load_config(write(tmp_path, text), (), plugins)
    assert [(s.name, s.params.cutoff_hz) for s in loaded.config.chain] == [("a", 80)]  # type: ignore[attr-defined]


def test_schema_contains_stage_params(plugins: Plugins) -> None:
    schema = config_json_schema(plugins)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert set(schema["properties"]) == {"capture", "processing", "array", "chain", "output", "log"}
    items: list[dict[str, Any]] = schema["properties"]["chain"]["items"]["oneOf"]
    by_kind = {item["properties"]["stage"]["const"]: item for item in items}
    assert set(by_kind) == {"highpass", "gain", "denoise"}
    hp = by_kind["highpass"]
    assert hp["properties"]["cutoff_hz"]["description"] == "Cutoff frequency (Hz)."
    assert hp["properties"]["cutoff_hz"]["exclusiveMinimum"] == 0
    assert {"name", "on_error"} <= set(hp["properties"]) and hp["required"] == ["stage"]
    assert hp["additionalProperties"] is False
    hop = schema["$defs"]["ProcessingConfig"]["properties"]["hop_ms"]
    assert hop["description"] == "STFT hop (ms): the chain's frame length."


def test_loaded_config_type(plugins: Plugins) -> None:
    assert isinstance(load_config(str(DATA / "good.yaml"), (), plugins), LoadedConfig)
