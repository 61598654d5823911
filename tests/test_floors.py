"""The shipped configs against their quality floors and CPU budgets (the table: ``tests/floors.py``).

Each config runs as ``voxd process`` runs it on a few items of the shared dev set; its output's quality
(SI-SDR, PESQ-WB, STOI), VAD agreement, low-frequency residue, level and DOA error must stay within the
limits set from the figures of the day they were last re-set, its CPU real-time factor on that speech
and every stage's median time per frame within their budgets. A stage replaced by a pass-through, or
made 10x slower, fails here."""

from __future__ import annotations

import pytest

from tests import floors

needs_dev = pytest.mark.skipif(not floors.dev_set_present(), reason="shared dev set absent")


@needs_dev
@pytest.mark.parametrize("config", sorted(floors.FLOORS))
def test_shipped_config_meets_its_floors_and_cpu_budgets(config):
    floor = floors.FLOORS[config]
    got = floors.measure(floors.ROOT / config, floor.items, floors.CHANNELS.get(config))
    print(f"{config}: {got}")
    assert floors.failures(floor, got) == []


def test_every_shipped_config_has_a_row():
    shipped = {str(p.relative_to(floors.ROOT)) for p in (floors.ROOT / "config").glob("*.yaml")}
    assert shipped == set(floors.FLOORS)
    for config, floor in floors.FLOORS.items():
        from voxd.config import load_config

        chain = load_config(str(floors.ROOT / config)).config.chain
        assert set(floor.stage_us) == {spec.name for spec in chain}, config
        assert (floor.doa_err is not None) == any(spec.kind == "doa" for spec in chain), config
