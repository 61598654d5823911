"""The shipped configs against their quality floors and CPU budgets (the table: ``tests/floors.py``).

Each config runs as ``voxd process`` runs it on a few items of the shared dev set; the mean SI-SDR,
PESQ-WB and STOI of its output must stay at or above the floors set from the figures of the day it was
last re-set (minus a small margin), and its CPU real-time factor on that speech within its budget. A
stage replaced by a pass-through, or made 10x slower, fails here (see ``tests/floors.py``)."""

from __future__ import annotations

import pytest

from tests import floors

needs_dev = pytest.mark.skipif(not floors.dev_set_present(), reason="shared dev set absent")


@needs_dev
@pytest.mark.parametrize("config", sorted(floors.FLOORS))
def test_shipped_config_meets_its_floors_and_cpu_budget(config):
    floor = floors.FLOORS[config]
    got = floors.measure(floors.ROOT / config, floor.items)
    print(f"{config}: {got}")
    for metric in ("si_sdr", "pesq", "stoi"):
        assert got[metric] >= getattr(floor, metric), (
            f"{config}: mean {metric} {got[metric]:.3f} below its floor {getattr(floor, metric)}")
    budget = floor.rtf * floors.budget_scale()
    assert got["rtf"] <= budget, f"{config}: CPU RTF {got['rtf']:.3f} over its budget {budget:.3f}"


def test_every_shipped_config_has_a_row():
    shipped = {str(p.relative_to(floors.ROOT)) for p in (floors.ROOT / "config").glob("*.yaml")}
    assert shipped == set(floors.FLOORS)
