"""Faults around the real connector sources: a sync process SIGKILLed mid-read resumes without gap or
duplicate, and no secret (OAuth client secret, refresh token, private-app token, DSN password) reaches
the database, the data folder, Dagster's storage or any output, also when syncs fail.

The vendor stand-ins run in the test process; the syncs run in child processes (the real
`actionlayer sync` command, or a small script doing what it does), so a SIGKILL hits a real process.
The kill is made deterministic by the stand-in itself: when the child asks for the n-th page of deals, the
server kills the child before answering, so pages 1..n-1 are committed and page n never arrives.
"""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml

from actionlayer.demo.world import generate_world, load_demo_config, write_sor
from actionlayer.settings import SourceSettings, load_sources
from connectors.sync import sync_source
from connectors.zoho import ObjectCursor
from tests.vendors import hubspot_server, zoho_server

pytestmark = pytest.mark.slow

CLI = str(Path(sys.executable).with_name("actionlayer"))
OBJECTS3 = ("accounts", "contacts", "deals")
KEYS = {"accounts": "account_id", "contacts": "contact_id", "deals": "deal_id"}
SUMMARY = re.compile(
    r"(?P<object>\w+): (?P<read>full read|incremental), (?P<pages>\d+) page\(s\): (?P<new>\d+) new, "
    r"(?P<changed>\d+) changed, (?P<unchanged>\d+) unchanged, (?P<deleted>\d+) deleted"
)

# What `actionlayer sync` does, for sources the CLI cannot build (see test_hubspot_source_configured_in_…):
# the connector from actionlayer.yml, sync_source with a factory, one stdout line per committed page.
SYNC_SCRIPT = """
import logging, sys
from datetime import datetime
from actionlayer.db import connect
from actionlayer.settings import load_sources
from connectors.sync import sync_source

logging.basicConfig(level=logging.INFO, stream=sys.stderr)
[settings] = [s for s in load_sources() if s.name == sys.argv[1]]
config = {k: v for k, v in settings.config.items() if k != "type"}  # work around the HubSpot 'type' bug
from importlib import import_module
from actionlayer.settings import CONNECTOR_TYPES
module, cls = CONNECTOR_TYPES[settings.type].split(":")
connector = getattr(import_module(module), cls).from_config(settings.name, config)
try:
    report = sync_source(
        lambda: connect(wait_seconds=30), connector, datetime.fromisoformat(sys.argv[2]),
        progress=lambda event: print(event, flush=True),
    )
except Exception as exc:
    print(f"error: {exc}", file=sys.stderr)
    raise SystemExit(1)
finally:
    connector.close()
for line in report.summary_lines():
    print(line, flush=True)
raise SystemExit(3 if report.refused else 0)
"""


# --------------------------------------------------------------------------------------------- helpers


def _world(tmp_path: Path, as_of: datetime) -> dict[str, list[dict]]:
    """Accounts, contacts and deals of the small demo world (41 / 121 / 155 records), contract text."""
    folder = tmp_path / "sor"
    write_sor(generate_world(load_demo_config(size="small")), folder, as_of - timedelta(days=60))
    records = {}
    for name in OBJECTS3:
        with (folder / f"{name}.csv").open(newline="", encoding="utf-8") as handle:
            records[name] = [
                {k: (v if v != "" else None) for k, v in row.items()} for row in csv.DictReader(handle)
            ]
    return records


def _env(tmp_path: Path, config: Path, secrets: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACTIONLAYER_", "DAGSTER_"))}
    env.update(
        ACTIONLAYER_CONFIG=str(config),
        ACTIONLAYER_DB=str(tmp_path / "data" / "actionlayer.duckdb"),
        ACTIONLAYER_DATA=str(tmp_path / "data"),
        PYTHONPATH=str(Path(__file__).resolve().parents[1]),
        **secrets,
    )
    return env


def _write_config(path: Path, sources: dict[str, dict[str, Any]]) -> Path:
    # max_broken_share 1: the demo world has broken rows on purpose; this file is about the mirror
    path.write_text(
        yaml.safe_dump({"sources": sources, "quality": {"max_broken_share": 1}}), encoding="utf-8"
    )
    return path


def _command(kind: str, tmp_path: Path, source: str, as_of: datetime) -> list[str]:
    if kind == "zoho":  # the real command line
        return [CLI, "sync", source, "--as-of", as_of.isoformat(sep=" ")]
    script = tmp_path / "sync_script.py"
    script.write_text(SYNC_SCRIPT, encoding="utf-8")
    return [sys.executable, str(script), source, as_of.isoformat(sep=" ")]


def _run(command: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


@contextmanager
def _kill_on(server: Any, is_target: Callable[..., bool], nth: int) -> Iterator[dict[str, Any]]:
    """Wrap the stand-in's request handler: on the n-th target request, SIGKILL `state['pid']` before
    answering (the child is then waiting for that page, every page before it committed)."""
    state: dict[str, Any] = {"pid": None, "seen": 0, "killed": threading.Event()}
    lock = threading.Lock()
    original = server.handle

    def handle(*args: Any, **kwargs: Any) -> Any:
        if is_target(*args):
            with lock:
                state["seen"] += 1
                fire = state["seen"] == nth and state["pid"] is not None
            if fire:
                os.kill(state["pid"], signal.SIGKILL)
                state["killed"].set()
        return original(*args, **kwargs)

    server.handle = handle
    try:
        yield state
    finally:
        del server.handle  # the class's method again


def _run_killed(command, env, cwd, server, is_target, nth) -> subprocess.CompletedProcess:
    with _kill_on(server, is_target, nth) as state:
        child = subprocess.Popen(
            command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        state["pid"] = child.pid
        try:
            out, err = child.communicate(timeout=120)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert state["killed"].is_set(), f"the child finished before the kill point:\n{out}\n{err}"
    assert child.returncode == -signal.SIGKILL, (child.returncode, out, err)
    return subprocess.CompletedProcess(command, child.returncode, out, err)


def _summaries(output: str) -> dict[str, dict[str, Any]]:
    return {m["object"]: m.groupdict() for m in SUMMARY.finditer(output)}


def _rows(db: Path, sql: str, params: list | None = None) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


def _state(db: Path, source: str) -> dict[str, Any]:
    """Everything a sync owns, comparable across runs (raw without its _loaded_at stamp)."""
    with duckdb.connect(str(db), read_only=True) as con:
        snapshot: dict[str, Any] = {
            "cursors": con.execute(
                "select * from ops.sync_cursors where source = ? order by object", [source]
            ).fetchall()
        }
        for name in OBJECTS3:
            snapshot[f"src.{name}"] = con.execute(
                f"select * from src.{source}__{name} order by _key"
            ).fetchall()
            snapshot[f"raw.{name}"] = con.execute(
                f"select * exclude (_loaded_at) from raw.{name} order by all"
            ).fetchall()
            snapshot[f"hist.{name}"] = con.execute(f"select * from hist.{name} order by all").fetchall()
    return snapshot


class _Vendor:
    """One stand-in with what the kill test needs: the source config, the secrets, the kill target and
    the keys the server holds."""

    def __init__(self, kind: str, tmp_path: Path, records: dict[str, list[dict]]) -> None:
        self.kind = kind
        if kind == "zoho":
            self.harness = zoho_server.make_harness(tmp_path / "zoho", per_page=20, objects=list(OBJECTS3))
            self.server = self.harness.server
            self.target = lambda method, path, *rest: method == "GET" and path == "/crm/v8/Deals"
        else:
            self.harness = hubspot_server.make_harness(tmp_path / "hubspot")
            self.harness.config.update(objects=list(OBJECTS3), page_size=20)
            self.server = self.harness.server
            self.target = lambda request, headers: (
                request.method == "GET" and request.path == "/crm/v3/objects/deals"
            )
        self.harness.seed(records)
        self.settings = SourceSettings("crm", kind, OBJECTS3, {"type": kind, **self.harness.config})

    def keys(self, obj: str) -> set[str]:
        if self.kind == "zoho":
            modules = [m.module for m in self.harness.mapping.objects[obj]]
            return {key for m in modules for key in self.server.records.get(m, {})}
        return {
            key
            for source in self.harness.mapping.objects[obj].sources
            for key, record in self.server.records.get(source.object_type, {}).items()
            if record.archived_ms is None
        }

    def connector(self):
        config = {k: v for k, v in self.settings.config.items() if k != "type"}
        return type(self.harness.connector()).from_config("crm", config, self.harness.environ)


# --------------------------------------------------------------------------------------------- 1: kill


@pytest.mark.parametrize(
    ("kind", "phase"),
    [("zoho", "full"), ("zoho", "incremental"), ("hubspot", "full")],
    ids=["zoho-full-read", "zoho-incremental", "hubspot-full-read"],
)
def test_kill_sync_process_mid_sync_resumes_without_gap_or_duplicate(
    tmp_path: Path, kind: str, phase: str
) -> None:
    as_of = datetime.now(UTC).replace(tzinfo=None, microsecond=0) + timedelta(minutes=5)
    records = _world(tmp_path, as_of)
    vendor = _Vendor(kind, tmp_path, records)
    db = tmp_path / "data" / "actionlayer.duckdb"
    db.parent.mkdir(parents=True)
    try:
        config = _write_config(tmp_path / "actionlayer.yml", {"crm": dict(vendor.settings.config)})
        env = _env(tmp_path, config, vendor.harness.environ)
        command = _command(kind, tmp_path, "crm", as_of)
        renamed: set[str] = set()
        if phase == "incremental":
            with duckdb.connect(str(db)) as con:
                sync_source(con, vendor.connector(), as_of)
            # 70 deals change in the CRM: 4 pages of 20 at per_page 20, each at its own second
            for deal in records["deals"][:70]:
                vendor.harness.upsert("deals", dict(deal, name=f"Renamed {deal['deal_id']}"))
                renamed.add(deal["deal_id"])
            as_of += timedelta(hours=1)
            command = _command(kind, tmp_path, "crm", as_of)
            before_kill = len(vendor.server.requests)

        killed = _run_killed(
            command, env, tmp_path, vendor.server, vendor.target, nth=4 if phase == "full" else 3
        )
        assert not _summaries(killed.stdout + killed.stderr), "the killed sync never reached its summary"

        # What the killed process left: some deal pages committed, not all; a full read still open.
        [deals_state] = _rows(
            db,
            "select pages_committed, full_sync_started_at is not null from ops.sync_cursors "
            "where source = 'crm' and object = 'deals'",
        )
        mirror = "src.crm__deals"
        if phase == "full":
            assert deals_state[1], "the killed full read is still marked open"
            stored = _rows(db, f"select count(*) from {mirror}")[0][0]
            assert 0 < stored < len(records["deals"]), stored
        else:
            assert not deals_state[1]
            done = {k for (k,) in _rows(db, f"select _key from {mirror} where name like 'Renamed %'")}
            assert 0 < len(done) < len(renamed), len(done)
            killed_since = [
                r.headers.get("If-Modified-Since")
                for r in vendor.server.requests[before_kill:]
                if r.path == "/crm/v8/Deals"
            ]

        # Resume: the same command runs to completion.
        before_resume = len(vendor.server.requests)
        resumed = _run(command, env, tmp_path)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        lines = _summaries(resumed.stdout + resumed.stderr)
        assert set(lines) == set(OBJECTS3), resumed.stdout + resumed.stderr
        if phase == "incremental":
            # resumed from the last committed page: exactly the changes not yet stored were changed now
            assert lines["deals"]["read"] == "incremental"
            assert int(lines["deals"]["changed"]) == len(renamed - done), lines["deals"]
            assert int(lines["deals"]["new"]) == 0
            resumed_since = [
                r.headers.get("If-Modified-Since")
                for r in vendor.server.requests[before_resume:]
                if r.path == "/crm/v8/Deals"
            ]
            assert resumed_since and resumed_since[0] > killed_since[0], "the resumed read did not restart"
        else:
            assert lines["deals"]["read"] == "full read", "a killed full read restarts from the beginning"

        # Every record exactly once, as the server holds it; raw agrees; cursors closed.
        for name in OBJECTS3:
            keys = vendor.keys(name)
            assert len(keys) == len(records[name])
            table = f"src.crm__{name}"
            assert _rows(
                db, f"select count(*) - count(distinct _key), count(*) filter (where _deleted) from {table}"
            ) == [(0, 0)]
            assert {k for (k,) in _rows(db, f"select _key from {table}")} == keys, name
            key = KEYS[name]
            raw = [k for (k,) in _rows(db, f"select {key} from raw.{name}")]
            assert len(raw) == len(set(raw)), f"raw.{name} holds a record twice"
            quarantined = {
                k for (k,) in _rows(db, "select record_key from ops.quarantine where object = ?", [name])
            }
            assert set(raw) | quarantined == keys and not set(raw) & quarantined, name
        if renamed:
            names = dict(_rows(db, "select deal_id, name from raw.deals"))
            assert all(names[k] == f"Renamed {k}" for k in renamed if k in names)
            assert sum(1 for k in renamed if k in names) > len(renamed) / 2

        # The cursors are those of an uninterrupted read of the same server, and no full read is open.
        cursors = _rows(db, "select object, cursor, full_sync_started_at from ops.sync_cursors order by 1")
        assert [c[0] for c in cursors] == sorted(OBJECTS3) and all(c[2] is None for c in cursors)
        reference = tmp_path / "reference.duckdb"
        with duckdb.connect(str(reference)) as con:
            sync_source(con, vendor.connector(), as_of)
        ref_cursors = _rows(
            reference, "select object, cursor, full_sync_started_at from ops.sync_cursors order by 1"
        )
        if phase == "full":
            assert cursors == ref_cursors
            for name in OBJECTS3:
                mirror_sql = f"select * exclude (_first_seen_at, _synced_at, _page_seq) from src.crm__{name} order by _key"
                assert _rows(db, mirror_sql) == _rows(reference, mirror_sql), name
                raw_sql = f"select * exclude (_loaded_at) from raw.{name} order by all"
                assert _rows(db, raw_sql) == _rows(reference, raw_sql), name
        else:
            # an incremental cursor keeps its own deletion mark; the modified watermark is the full read's
            for (name, text, _), (_, ref_text, _) in zip(cursors, ref_cursors, strict=True):
                mine, ref = ObjectCursor.decode(text, "crm", name), ObjectCursor.decode(ref_text, "crm", name)
                assert {m: c.modified for m, c in mine.modules.items()} == {
                    m: c.modified for m, c in ref.modules.items()
                }, name

        # An unchanged third run changes nothing.
        before = _state(db, "crm")
        third = _run(_command(kind, tmp_path, "crm", as_of + timedelta(hours=2)), env, tmp_path)
        assert third.returncode == 0, third.stdout + third.stderr
        lines = _summaries(third.stdout + third.stderr)
        assert set(lines) == set(OBJECTS3)
        for line in lines.values():
            assert (line["read"], line["new"], line["changed"], line["deleted"]) == (
                "incremental",
                "0",
                "0",
                "0",
            ), line
        assert _state(db, "crm") == before
    finally:
        vendor.harness.close()


# --------------------------------------------------------------------------------------------- 2: secrets


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _database_text(db: Path) -> str:
    """Every value of every table (all schemas) as text: DuckDB compresses strings, so no byte grep."""
    chunks = []
    with duckdb.connect(str(db), read_only=True) as con:
        tables = con.execute(
            "select table_schema, table_name from information_schema.tables where table_type = 'BASE TABLE'"
        ).fetchall()
        for schema, table in tables:
            columns = [
                c
                for (c,) in con.execute(
                    "select column_name from information_schema.columns where table_schema = ? and table_name = ?",
                    [schema, table],
                ).fetchall()
            ]
            casts = ", ".join(f'cast("{c}" as varchar)' for c in columns)
            for row in con.execute(f'select {casts} from "{schema}"."{table}"').fetchall():
                chunks.append(f"{schema}.{table}: " + " | ".join("" if v is None else v for v in row))
    return "\n".join(chunks)


def _leaks(secrets: dict[str, str], data: Path, db: Path, outputs: list[str]) -> list[str]:
    """Where each secret value was found: a table of the database, a file under the data folder, output."""
    found = []
    text = _database_text(db)
    files = [p for p in data.rglob("*") if p.is_file()]
    for label, secret in secrets.items():
        if secret in text:
            line = next(x for x in text.splitlines() if secret in x)
            found.append(f"{label} in the database: {line[:300]}")
        for path in files:
            if secret.encode() in path.read_bytes():
                found.append(f"{label} in {path}")
        for number, output in enumerate(outputs):
            if secret in output:
                found.append(
                    f"{label} in output #{number}: …{output[max(0, output.index(secret) - 200) :][:300]}"
                )
    return found


def test_fault_no_secret_value_appears_in_database_exports_or_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import psycopg
    from psycopg.conninfo import make_conninfo

    from tests.vendors import postgres as pg_vendor

    tag = uuid.uuid4().hex[:12]
    # the stand-in checks these module constants at the token endpoint
    monkeypatch.setattr(zoho_server, "CLIENT_ID", f"1000.CLIENTID{tag.upper()}")
    monkeypatch.setattr(zoho_server, "CLIENT_SECRET", f"zoho-client-secret-{tag}")
    monkeypatch.setattr(zoho_server, "REFRESH_TOKEN", f"1000.refresh-{tag}.c0ffee")
    pg_password = f"pg-pass-{tag}"
    wrong = {
        "wrong Zoho refresh token": f"1000.refresh-WRONG-{tag}",
        "wrong HubSpot token": f"pat-na1-WRONG-{tag}",
    }
    as_of = datetime.now(UTC).replace(tzinfo=None, microsecond=0) + timedelta(minutes=5)
    world_dir = tmp_path / "sor"
    write_sor(generate_world(load_demo_config(size="small")), world_dir, as_of - timedelta(days=60))

    def records(name: str) -> list[dict]:
        with (world_dir / f"{name}.csv").open(newline="", encoding="utf-8") as handle:
            return [{k: (v if v != "" else None) for k, v in r.items()} for r in csv.DictReader(handle)]

    data = tmp_path / "data"
    db = data / "actionlayer.duckdb"
    zoho = zoho_server.make_harness(tmp_path / "zoho", objects=list(OBJECTS3))
    hubspot = hubspot_server.make_harness(tmp_path / "hubspot")
    postgres = pg_vendor.make_harness(tmp_path / "pg")
    try:
        zoho.seed({name: records(name) for name in OBJECTS3})
        hubspot.seed({"tickets": records("tickets")})
        postgres.seed({"invoices": records("invoices")})
        with psycopg.connect(postgres.dsn, autocommit=True) as admin:
            user = admin.execute("select current_user").fetchone()[0]
            admin.execute(f"alter role \"{user}\" password '{pg_password}'")
        pg_dsn = make_conninfo(postgres.dsn, password=pg_password)
        down = _closed_port()
        pg_down_dsn = make_conninfo(postgres.dsn, host="127.0.0.1", port=str(down), password=pg_password)

        secrets = {
            "Zoho client id": zoho_server.CLIENT_ID,
            "Zoho client secret": zoho_server.CLIENT_SECRET,
            "Zoho refresh token": zoho_server.REFRESH_TOKEN,
            "HubSpot token": hubspot.server.token,
            "Postgres password": pg_password,
            "Postgres DSN": pg_dsn,
            **wrong,
        }
        environ = {**zoho.environ, **hubspot.environ, pg_vendor.DSN_ENV: pg_dsn}
        hs_config = dict(hubspot.config, objects=["tickets"])
        pg_config = postgres.connector_config()
        pg_config["objects"] = {"invoices": pg_config["objects"]["invoices"]}
        sources = {
            "zcrm": {"type": "zoho", **zoho.config},
            "hs": {"type": "hubspot", **hs_config},
            "billing": {"type": "postgres", **pg_config},
        }
        good = _write_config(tmp_path / "actionlayer.yml", sources)
        dead = f"http://127.0.0.1:{down}"
        broken = _write_config(
            tmp_path / "down.yml",
            {
                "zcrm": dict(sources["zcrm"], api_base=dead, accounts_base=dead),
                "hs": dict(sources["hs"], api_base=dead),
                "billing": sources["billing"],
            },
        )
        # controls: the secrets are really in the environment handed over, and never in the settings files
        for label, secret in secrets.items():
            if label not in wrong and not label.startswith("Postgres password"):
                assert secret in environ.values(), label
            for settings_file in (good, broken):
                assert secret not in settings_file.read_text(encoding="utf-8"), label
        assert pg_password in environ[pg_vendor.DSN_ENV]

        outputs: list[str] = []
        results: dict[str, subprocess.CompletedProcess] = {}

        def run(label: str, command: list[str], config: Path, **override: str) -> subprocess.CompletedProcess:
            result = _run(command, _env(tmp_path, config, {**environ, **override}), tmp_path)
            outputs.extend([result.stdout, result.stderr])
            results[label] = result
            return result

        when = as_of.isoformat(sep=" ")
        script = _command("hubspot", tmp_path, "hs", as_of)
        assert run("zoho ok", [CLI, "sync", "zcrm", "--as-of", when], good).returncode == 0
        assert run("postgres ok", [CLI, "sync", "billing", "--as-of", when], good).returncode == 0
        assert run("hubspot ok", script, good).returncode == 0, results["hubspot ok"].stderr
        assert run("hubspot cli", [CLI, "sync", "hs", "--as-of", when], good).returncode == 0, results[
            "hubspot cli"
        ].stderr
        zoho.server.fail_next(12, status=401, retry_after=None)
        assert run("zoho 401", [CLI, "sync", "zcrm", "--as-of", when, "--full"], good).returncode != 0
        zoho.server.expire_token()
        bad_refresh = {"TEST_ZOHO_REFRESH_TOKEN": wrong["wrong Zoho refresh token"]}
        assert run("zoho wrong token", [CLI, "sync", "zcrm", "--full"], good, **bad_refresh).returncode != 0
        bad_token = {hubspot_server.TOKEN_ENV: wrong["wrong HubSpot token"]}
        assert (
            run("hubspot wrong token", [*script[:3], when.replace(" ", "T")], good, **bad_token).returncode
            != 0
        )
        assert run("zoho down", [CLI, "sync", "zcrm", "--full"], broken).returncode != 0
        assert run("hubspot down", script, broken).returncode != 0
        assert (
            run(
                "postgres down", [CLI, "sync", "billing"], good, **{pg_vendor.DSN_ENV: pg_down_dsn}
            ).returncode
            != 0
        )
        # the failures are the ones meant: refused credentials, unreachable servers
        assert "401" in results["hubspot wrong token"].stdout + results["hubspot wrong token"].stderr
        assert "refresh" in results["zoho wrong token"].stdout + results["zoho wrong token"].stderr
        assert zoho.server.token_grants > 0
        assert _rows(db, "select count(*) from raw.tickets")[0][0] > 0
        assert _rows(db, "select count(*) from raw.invoices")[0][0] > 0
        assert _rows(db, "select count(*) from raw.deals")[0][0] > 0

        # A Dagster run on the data folder's own instance: one source fine, one refused, one unreachable.
        import dagster as dg

        monkeypatch.setenv("ACTIONLAYER_DATA", str(data))
        monkeypatch.setenv("ACTIONLAYER_DB", str(db))
        monkeypatch.setenv("ACTIONLAYER_CONFIG", str(good))
        monkeypatch.setenv("DAGSTER_HOME", str(data / "dagster_home"))
        for name, value in {**environ, **bad_token, pg_vendor.DSN_ENV: pg_down_dsn}.items():
            monkeypatch.setenv(name, value)
        from orchestration.definitions import build_definitions
        from orchestration.resources import run_config_for
        from orchestration.sor_assets import raw_key

        settings = [
            SourceSettings(
                name, raw["type"], tuple(raw["objects"]), {k: v for k, v in raw.items() if k != "type"}
            )
            for name, raw in sources.items()
        ]
        defs = build_definitions(settings)
        job = defs.resolve_job_def("actionlayer_loop")
        caplog.set_level("DEBUG")
        (data / "dagster_home").mkdir(parents=True, exist_ok=True)
        with dg.instance_for_test(temp_dir=str(data / "dagster_home")) as instance:
            outcome = job.execute_in_process(
                run_config=run_config_for(as_of=as_of + timedelta(hours=1)),
                instance=instance,
                asset_selection=[raw_key(o) for s in settings for o in s.objects],
                raise_on_error=False,
            )
            events = "\n".join(str(e) for e in instance.all_logs(outcome.run_id))
        outputs.extend([caplog.text, events])
        assert "401" in events or "refused" in events, "the refused source left no trace in the run's events"
        assert any(f.is_file() for f in (data / "dagster_home").rglob("*")), "Dagster stored nothing"

        leaks = _leaks(secrets, data, db, outputs)
        assert not leaks, "\n".join(leaks)

        # control: the same search finds a secret placed in a table, a JSON column and a file
        control = tmp_path / "control"
        control.mkdir()
        with duckdb.connect(str(control / "c.duckdb")) as con:
            con.execute("create schema s; create table s.t (a varchar, b json)")
            con.execute("insert into s.t values (?, ?)", ["x", f'{{"v": "{pg_password}"}}'])
            con.execute("insert into s.t values (?, null)", [f"Bearer {hubspot.server.token}"])
        (control / "log.txt").write_text(f"secret={zoho_server.CLIENT_SECRET}")
        planted = _leaks(secrets, control, control / "c.duckdb", [f"x {wrong['wrong HubSpot token']} y"])
        assert any("Postgres password in the database" in p for p in planted)
        assert any("HubSpot token in the database" in p for p in planted)
        assert any(p.startswith("Zoho client secret in") and "log.txt" in p for p in planted)
        assert any(p.startswith("wrong HubSpot token in output") for p in planted)
    finally:
        zoho.close()
        hubspot.close()
        postgres.close()


# --------------------------------------------------------------------------------------------- configuration


def test_hubspot_source_configured_in_actionlayer_yml_builds_its_connector(tmp_path: Path) -> None:
    path = _write_config(
        tmp_path / "actionlayer.yml",
        {"crm": {"type": "hubspot", "token_env": "HS_TOKEN", "objects": ["deals"]}},
    )
    [source] = load_sources(path)
    connector = source.connector({"HS_TOKEN": "pat-na1-test"})
    try:
        assert list(connector.objects()) == ["deals"]
    finally:
        connector.close()
