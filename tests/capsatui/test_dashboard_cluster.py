"""The dashboard names a pool's cluster network: in its Profile cell and in the detail panel."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from textual.widgets import DataTable

import engine
from capsatui.app import CapsaApp
from capsatui.hub import PoolState
from capsatui.screens.dashboard import cluster_of, detail_text, row_cells

CLUSTER_PROFILE = "name: db\nmemory_mb: 128\npool: {size: 1, max_size: 2}\nnetwork: {cluster: backend}\n"
PLAIN_PROFILE = "name: web\nmemory_mb: 128\nnetwork: user_nat\n"


def _state(text: str) -> PoolState:
    profile = engine.parse_profile(text, "p.yaml")
    return PoolState(profile.name, profile, None, False, None, [], [], [])


def test_a_cluster_pool_shows_its_cluster_in_the_row_and_the_detail() -> None:
    state = _state(CLUSTER_PROFILE)
    assert cluster_of(state) == "backend"
    assert str(row_cells(state, "tcg")[0]) == "db [backend]"
    assert "cluster network: backend" in str(detail_text(state, "tcg"))


def test_other_pools_show_no_cluster() -> None:
    plain = _state(PLAIN_PROFILE)
    assert cluster_of(plain) is None
    assert row_cells(plain, "tcg")[0] == "web"
    assert "cluster" not in str(detail_text(plain, "tcg"))
    broken = PoolState("x.yaml", None, "bad", False, None, [], [], [])
    assert cluster_of(broken) is None and row_cells(broken, "tcg")[0] == "x.yaml"


async def test_the_dashboard_table_shows_the_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "profiles"
    folder.mkdir()
    (folder / "db.yaml").write_text(CLUSTER_PROFILE)
    monkeypatch.setenv("CAPSA_CONFIG_DIR", str(tmp_path))
    app = CapsaApp(autostart=None)
    async with app.run_test(size=(160, 40)) as pilot:
        table = app.dashboard.query_one("#pools", DataTable)
        deadline = time.monotonic() + 10
        while "db" not in {str(row.value) for row in table.rows}:
            assert time.monotonic() < deadline, "the profile row never appeared"
            await pilot.pause(0.05)
        assert str(table.get_cell("db", "profile")) == "db [backend]"
