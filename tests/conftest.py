"""Suite-wide fixtures.

A module that sets `QUALITY_GATE_OFF = True` checks row-level quarantine on small fixtures, where one
broken row is a large share of an object; for its tests the object-level quality gate is lifted
(`quality.max_broken_share: 1`). The gate itself is tested in test_quality_gate.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _quality_gate_off_where_asked(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    if not getattr(request.module, "QUALITY_GATE_OFF", False):
        return
    settings = Path(tmp_path_factory.mktemp("settings")) / "actionlayer.yml"
    settings.write_text("quality:\n  max_broken_share: 1\n", encoding="utf-8")
    monkeypatch.setenv("ACTIONLAYER_CONFIG", str(settings))
