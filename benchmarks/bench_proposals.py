"""Times the proposal pass (`actionlayer.proposals.propose`) on a large candidate build in a real DuckDB file.

Seeds N candidates (default 50,000) over five rules (levels 1, 3, 4, 5 and an escalating level-4 rule), with
about 10 % held out and 10 % suppressed, then times:

  1. the first pass: every candidate is new;
  2. an unchanged re-run of the same pass (same as-of): must append nothing;
  3. an unchanged candidate build one hour later: nothing new either, only the anti-join.

```
.venv/bin/python benchmarks/bench_proposals.py [--candidates 50000] [--profile FILE]
```

`--profile FILE` writes a cProfile of the first pass to FILE (read it with `python -m pstats FILE`).
"""

from __future__ import annotations

import argparse
import cProfile
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pandas  # noqa: F401  (imported by the first ledger write anyway; kept out of the timings)

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from proposal_support import rule_meta  # noqa: E402

from actionlayer.proposals import propose  # noqa: E402
from actionlayer.rules import Rule, rule_from_meta  # noqa: E402
from actionlayer.settings import EscalationRoutes  # noqa: E402

AS_OF = datetime(2026, 9, 10, 9)
ROUTES = EscalationRoutes(
    managers={"owner0@seller.example": "head@seller.example"}, alerts_to="ops@seller.example"
)
GUARDRAILS = {"daily_cap": 1_000_000, "blast_radius": {"factor": 3, "floor": 20}}
LEARNING = {
    "segment_by": "tier",
    "arms": {"channel": ["email", "line"], "send_window": ["morning", "afternoon"]},
    "windows": {"morning": [8, 12], "afternoon": [13, 17]},
}


def _meta(rule_id: str, level: int, **overrides: object) -> dict[str, object]:
    # the tests' rule meta, with a cap no benchmark pass reaches
    meta = rule_meta(rule_id, level, version=1, **overrides)
    if level >= 4:
        meta["guardrails"] = GUARDRAILS
    return meta


RULE_IDS = ("view", "review", "auto", "learn", "care")


def bench_rules() -> dict[str, Rule]:
    metas = [
        _meta("view", 1),
        _meta("review", 3),
        _meta("auto", 4),
        _meta("learn", 5, learning=LEARNING),
        _meta("care", 4, escalate_when={"keywords": ["refund"], "fields": ["comment"], "to": "manager"}),
    ]
    return {str(meta["rule_id"]): rule_from_meta(f"rule_{meta['rule_id']}", meta) for meta in metas}


def seed_candidates(
    con: duckdb.DuckDBPyConnection, count: int, as_of: datetime = AS_OF, rule_ids: tuple[str, ...] = RULE_IDS
) -> None:
    """`count` candidates in the shape of main.action_candidates, built in SQL (deterministic), spread over
    `rule_ids` in turn."""
    con.execute("drop table if exists main.action_candidates")
    con.execute(
        """create table main.action_candidates as
        with base as (
            select n, (?::varchar[])[n % len(?::varchar[]) + 1] as rule_id,
                   case when n % 10 = 7 then 'held_out' when n % 10 = 3 then 'suppressed' else 'eligible' end
                       as journey_status
            from range(?) as t(n)
        )
        select md5(rule_id || '|deal|D-' || n || '|k') as action_id,
               rule_id, 1 as rule_version, 3 as maturity_level, 'deal' as record_type, 'D-' || n as record_id,
               'C-' || n as contact_id, 'A-' || (n % 997) as account_id,
               'owner' || (n % 7) || '@seller.example' as owner_email,
               'c' || n || '@customer.example' as recipient_email,
               'email' as channel, 'contact' as audience, 'sales' as category, (n * 37) % 100 as priority,
               ?::timestamp - interval 1 day as signal_at,
               json_object('deal_name', 'Deal ' || n, 'comment',
                           case when n % 50 = 4 then 'wants a refund' else 'fine' end)::varchar as reason,
               n % 97 = 0 as escalate, 'Send a follow-up' as recommended_action,
               journey_status = 'held_out' as holdout, journey_status,
               case journey_status when 'suppressed' then 'frequency_cap: 3 in 7 days' end as journey_reason,
               'Ada' as contact_first_name, 'Lovelace' as contact_last_name, 'Acme' as account_name,
               ['gold', 'silver', 'bronze'][n % 3 + 1] as tier,
               case when n % 4 = 0 then 'Asia/Tokyo' end as contact_timezone,
               ?::timestamp as as_of
        from base""",
        [list(rule_ids), list(rule_ids), count, as_of, as_of],
    )


def _timed(label: str, count: int, run) -> float:  # noqa: ANN001
    started = time.perf_counter()
    report = run()
    seconds = time.perf_counter() - started
    per = seconds / count * 1e6 if count else 0.0
    print(f"{label:<34} {seconds:8.2f} s  {per:9.1f} µs/candidate  {report.new_events:>8} new events")
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--candidates", type=int, default=50_000)
    parser.add_argument("--profile", type=Path, help="write a cProfile of the first pass to this file")
    args = parser.parse_args(argv)
    rules = bench_rules()
    with tempfile.TemporaryDirectory() as tmp:
        con = duckdb.connect(str(Path(tmp) / "bench.duckdb"))
        seed_candidates(con, args.candidates)
        print(f"{args.candidates} candidates, {len(rules)} rules")

        def first():  # noqa: ANN202
            return propose(con, AS_OF, rules, ROUTES)

        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            _timed("first pass", args.candidates, first)
            profiler.disable()
            profiler.dump_stats(str(args.profile))
        else:
            _timed("first pass", args.candidates, first)
        _timed("unchanged re-run (same as-of)", args.candidates, first)
        later = AS_OF + timedelta(hours=1)
        _timed("unchanged build, 1 h later", args.candidates, lambda: propose(con, later, rules, ROUTES))
        events = con.execute("select count(*) from ops.action_ledger").fetchall()[0][0]
        print(f"ledger: {events} events")
        con.close()


if __name__ == "__main__":
    main()
