"""Writes the full ledger of a fixed multi-pass world to a file, to compare two versions of the proposal pass.

The world exercises every route of `propose`: levels 1, 3, 4 and 5, holdout, suppression (lifted, re-suppressed
for another kind, re-suppressed in other words), escalation to a manager, a failing template, the daily cap,
the blast-radius guard, expired reviews and re-runs of the same pass. Run it with two checkouts and diff the
outputs; everything but `recorded_at` (the wall clock) must be identical, `seq` included.

```
.venv/bin/python benchmarks/ledger_fingerprint.py OUT.jsonl [--candidates 3000]
```
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parents[1]
for folder in (ROOT, ROOT / "benchmarks"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from bench_proposals import AS_OF, ROUTES, _meta, bench_rules, seed_candidates  # noqa: E402

from actionlayer.proposals import propose  # noqa: E402
from actionlayer.rules import rule_from_meta  # noqa: E402

RULE_IDS = ("view", "review", "auto", "learn", "care", "capped", "broken")


def _rules() -> dict:
    rules = bench_rules()
    extra = [
        _meta("capped", 4, guardrails={"daily_cap": 40, "blast_radius": {"factor": 3, "floor": 20}}),
        # only some candidates' reasons carry `discount`: the others fail to render
        _meta("broken", 3, template={"subject": "Offer", "body": "[[ discount ]] off for [[ deal_name ]]"}),
    ]
    rules.update({str(m["rule_id"]): rule_from_meta(f"rule_{m['rule_id']}", m) for m in extra})
    return rules


def _build(con: duckdb.DuckDBPyConnection, count: int, as_of, variant: int) -> None:  # noqa: ANN001
    seed_candidates(con, count, as_of, RULE_IDS)
    con.execute(
        """update main.action_candidates
        set reason = json_merge_patch(reason, '{"discount": "10%"}')
        where rule_id = 'broken' and hash(record_id) % 2 = 0"""
    )
    if variant >= 1:
        # some suppressions lift, some change kind, some stay the same kind in other words
        con.execute(
            """update main.action_candidates set
                journey_status = case when hash(record_id) % 3 = 0 then 'eligible' else 'suppressed' end,
                journey_reason = case hash(record_id) % 3
                    when 0 then null when 1 then 'cooldown: contacted 2 days ago'
                    else 'frequency_cap : 4 in 7 days' end
            where journey_status = 'suppressed'"""
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--candidates", type=int, default=3000)
    args = parser.parse_args(argv)
    rules = _rules()
    small = args.candidates // 20
    # (as-of, candidates in the build, variant): a first pass, quiet days for the blast-radius history, a
    # surge, and a pass after the review expiry
    passes = [
        (AS_OF, args.candidates, 0),
        (AS_OF, args.candidates, 0),
        (AS_OF + timedelta(hours=1), args.candidates, 1),
        (AS_OF + timedelta(days=1), args.candidates + small, 1),
        (AS_OF + timedelta(days=2), args.candidates + 2 * small, 1),
        (AS_OF + timedelta(days=3), args.candidates + 3 * small, 1),
        (AS_OF + timedelta(days=4), 3 * args.candidates, 1),
        (AS_OF + timedelta(days=4), 3 * args.candidates, 1),
        (AS_OF + timedelta(days=9), 3 * args.candidates, 0),
    ]
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        con = duckdb.connect(str(Path(tmp) / "fingerprint.duckdb"))
        for as_of, count, variant in passes:
            _build(con, count, as_of, variant)
            report = propose(con, as_of, rules, ROUTES)
            lines.append({"pass": str(as_of), "summary": report.summary_lines()})
        cursor = con.execute("select * exclude (recorded_at) from ops.action_ledger order by seq")
        names = [d[0] for d in cursor.description]
        lines += [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        cursor = con.execute("select * from ops.alerts order by alert_id")
        names = [d[0] for d in cursor.description]
        lines += [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        lines += [list(row) for row in con.execute("select * from ops.rule_runs order by all").fetchall()]
        con.close()
    with args.out.open("w") as out:
        for line in lines:
            out.write(json.dumps(line, default=str, sort_keys=True) + "\n")
    print(f"{len(lines)} lines written to {args.out}")


if __name__ == "__main__":
    main()
