"""Suite-wide fixtures.

`quick_demo` runs the real demo (`actionlayer demo --size coverage_quick`: Dagster job, dbt rules and marts,
ledger, review files, dispatch) once per session; the coverage and the learning proofs both read its database.

A module that sets `QUALITY_GATE_OFF = True` checks row-level quarantine on small fixtures, where one
broken row is a large share of an object; for its tests the object-level quality gate is lifted
(`quality.max_broken_share: 1`). The gate itself is tested in test_quality_gate.py.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from actionlayer.config import PROJECT_ROOT
from actionlayer.demo.world import DemoConfig, load_demo_config

QUICK_DEMO_SIZE = "coverage_quick"

# `make test` runs the suite on pytest-xdist workers. Each worker gets its own dbt target folder (manifest,
# compiled SQL, partial parse) and its own Dagster home, so no worker reads another's half-written files;
# subprocesses inherit them. A test that sets its own keeps it.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if _WORKER:
    _scratch = PROJECT_ROOT / "dbt_project" / "target" / f"xdist-{_WORKER}"
    os.environ.setdefault("DBT_TARGET_PATH", str(_scratch))
    os.environ.setdefault("DBT_LOG_PATH", str(_scratch / "logs"))
    os.environ.setdefault("DAGSTER_HOME", str(_scratch / "dagster_home"))


# Scheduling on xdist workers: a test file is one unit of work (its module fixtures are built once), except
# that the files reading the quick demo are one unit together, so one worker builds it and none waits on the
# other's lock. The longest units start first, so the suite does not end on one long file.
_SHARED_UNITS = {"test_demo_coverage.py": "quick demo", "test_demo_learning.py": "quick demo"}
_LONGEST_FIRST = (
    "test_demo_coverage.py",
    "test_demo_learning.py",
    "test_loop.py",
    "test_sources_dagster.py",
    "test_source_faults.py",
    "test_quality_gate.py",
    "test_backtest.py",
    "test_dagster.py",
)


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    from xdist.scheduler import LoadScopeScheduling

    class FileScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return _SHARED_UNITS.get(Path(path).name, path)

    return FileScheduling(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: index for index, name in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept within a rank


@pytest.fixture(autouse=True)
def _quality_gate_off_where_asked(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    if not getattr(request.module, "QUALITY_GATE_OFF", False):
        return
    settings = Path(tmp_path_factory.mktemp("settings")) / "actionlayer.yml"
    settings.write_text("quality:\n  max_broken_share: 1\n", encoding="utf-8")
    monkeypatch.setenv("ACTIONLAYER_CONFIG", str(settings))


@dataclass(frozen=True)
class QuickDemo:
    """A finished `actionlayer demo` run: its database, the world's config, and what it printed."""

    data: Path
    config: DemoConfig
    stdout: str

    @property
    def db(self) -> Path:
        return self.data / "actionlayer.duckdb"


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory: pytest.TempPathFactory) -> QuickDemo:
    # Under xdist every worker is its own session: they share one run in the folder all workers' temp dirs
    # live in. The first worker to need it builds it under a file lock; the others wait, then read it.
    root = tmp_path_factory.getbasetemp()
    root = root.parent if _WORKER else root
    workdir = root / "quick_demo"
    data = workdir / "data"
    printed = workdir / "stdout.txt"
    config = load_demo_config(size=QUICK_DEMO_SIZE)
    with open(root / "quick_demo.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not printed.exists():
            shutil.rmtree(workdir, ignore_errors=True)
            workdir.mkdir()
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("ACTIONLAYER_")},
                "ACTIONLAYER_DATA": str(data),
                "ACTIONLAYER_DB": str(data / "actionlayer.duckdb"),
                "DAGSTER_HOME": str(data / "dagster_home"),
                "ACTIONLAYER_CONFIG": str(workdir / "no-settings.yml"),
                "ACTIONLAYER_REVIEW_SECRET": "c0ve" * 16,
                "COLUMNS": "200",
            }
            run = subprocess.run(
                [
                    str(Path(sys.executable).with_name("actionlayer")),
                    "demo",
                    "--size",
                    QUICK_DEMO_SIZE,
                    "--seed",
                    str(config.seed),
                ],
                cwd=PROJECT_ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=900,
            )
            assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
            printed.write_text(run.stdout, encoding="utf-8")
    stdout = printed.read_text(encoding="utf-8")
    assert "What each rule did and what it was worth" in stdout
    return QuickDemo(data=data, config=config, stdout=stdout)
