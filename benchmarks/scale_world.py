"""A clean synthetic company in the SoR contract, at scale, generated set-based in DuckDB.

One job: write a seeded contract folder (CSV and Parquet) of a chosen size in which every rule fires
thousands of times at size M, plus the same world after 1 % of its records changed (new activities,
stage changes, payments, new tickets), plus 0.1 % deliberately broken rows per object, each with one
known problem, and manifests saying what was planted and what changed.

No Python loop runs per record: every table is one `select … from range(n)` whose values come from
`hash(seed, tag, index)`, so the same seed gives the same files and size L stays feasible.

Layout written under `out`:

    base/csv/<object>.csv  base/parquet/<object>.parquet  base/planted_broken.parquet
    changed/csv/…          changed/parquet/…              changed/planted_broken.parquet
    changes.parquet        world.json

Parquet columns are the contract's text (VARCHAR), the same values as the CSV: a broken value such as
`2026-02-30 10:00:00` has no typed Parquet form. Index arithmetic keeps references valid: contact j
belongs to account j // 5, deal k to account k // 10, activity m to contact m // 10, invoice n to
contact n, contract q to account q.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path

import duckdb

from actionlayer.contract import OBJECT_NAMES, OBJECTS, Kind, SorObject

# Accounts per size; every other object scales with it (the M: 100k accounts, 500k contacts,
# 1M deals, 5M activities, 500k invoices, 200k tickets, 200k NPS answers, 100k contracts).
SIZES: dict[str, int] = {"XS": 200, "S": 10_000, "M": 100_000, "L": 1_000_000}
PER_ACCOUNT: dict[str, int] = {
    "accounts": 1,
    "contacts": 5,
    "deals": 10,
    "activities": 50,
    "invoices": 5,
    "tickets": 2,
    "nps_responses": 2,
    "contracts": 1,
}
DEFAULT_AS_OF = datetime(2026, 11, 2, 9, 0, 0)
DEFAULT_SEED = 20261102
INCREMENT = timedelta(days=1)  # the incremental pass runs one day after the full one
CHANGE_SHARE = 0.01
BROKEN_SHARE = 0.001
FORMATS = ("csv", "parquet")
ID_PREFIX = {
    "accounts": "A",
    "contacts": "C",
    "deals": "D",
    "activities": "ACT",
    "invoices": "INV",
    "tickets": "T",
    "nps_responses": "N",
    "contracts": "K",
}

Progress = Callable[[str], None]


@dataclass(frozen=True)
class WorldInfo:
    """What was generated: size, seed, both as-of times and row counts (good rows, broken, changed)."""

    size: str
    seed: int
    as_of: str
    as_of_changed: str
    rows: dict[str, int]
    broken: dict[str, int]
    changes: dict[str, int]
    seconds: float

    @property
    def as_of_dt(self) -> datetime:
        return datetime.fromisoformat(self.as_of)

    @property
    def as_of_changed_dt(self) -> datetime:
        return datetime.fromisoformat(self.as_of_changed)


def counts_for(size: str) -> dict[str, int]:
    accounts = SIZES[size]
    return {name: accounts * factor for name, factor in PER_ACCOUNT.items()}


def _ts(moment: datetime) -> str:
    return f"timestamp '{moment:%Y-%m-%d %H:%M:%S}'"


def _macros(seed: int, as_of: datetime) -> str:
    return f"""
    create or replace macro u(tag, i) as (hash({seed}, tag, i) % 1000000007) / 1000000007.0;
    create or replace macro pick(tag, i, n) as cast(hash({seed}, tag, i) % n as bigint);
    create or replace macro ago(days) as date_trunc('second', {_ts(as_of)} - to_microseconds(cast(days * 86400e6 as bigint)));
    create or replace macro after(t, days) as date_trunc('second', t + to_microseconds(cast(days * 86400e6 as bigint)));
    create or replace macro kid(prefix, i) as prefix || lpad(cast(i as varchar), 9, '0');
    """


def _typed_tables(con: duckdb.DuckDBPyConnection, n: dict[str, int], as_of: datetime) -> None:
    """The clean world as typed tables g_<object> (plus an `idx` column), one statement each."""
    A = n["accounts"]
    owners = max(5, A // 200)
    at = _ts(as_of)
    con.execute(f"""
    create or replace table g_accounts as
    select i as idx,
        kid('A', i) as account_id,
        'Company ' || i || ['', ' GmbH', ' Ltd', ' Inc.', ' S.A.'][1 + pick('legal', i, 5)] as name,
        case when u('ind_null', i) < 0.1 then null
             else ['Software', 'Manufacturing', 'Retail', 'Logistics', 'Health care', 'Finance'][1 + pick('ind', i, 6)] end as industry,
        case when u('tier', i) < 0.6 then 'smb' when u('tier', i) < 0.9 then 'mid' else 'enterprise' end as tier,
        'owner' || pick('owner', i, {owners}) || '@scale-company.example' as owner_email,
        ago(400 + u('acc_created', i) * 1500) as created_at,
        -- dormant: nothing open and nobody touched for months; quiet: no touch in the last 45 days
        case when u('seg', i) < 0.10 then 'dormant' when u('seg', i) < 0.25 then 'quiet' else 'active' end as seg
    from range({A}) t(i);
    alter table g_accounts add column updated_at timestamp;
    update g_accounts set updated_at = after(created_at, u('acc_upd', idx) * 60);

    create or replace table g_contacts as
    select j as idx, kid('C', j) as contact_id, kid('A', j // 5) as account_id, j // 5 as account_idx,
        ['Anna', 'Ben', 'Chloé', 'Dmitri', 'Eva', 'Farid', 'Grace', 'Hiro', 'Ines', 'José'][1 + pick('first', j, 10)] as first_name,
        ['Müller', 'Smith', 'García', 'Rossi', 'Nowak', 'Dubois', 'Tanaka', 'Jensen', 'O''Brien', 'Silva'][1 + pick('last', j, 10)] as last_name,
        'c' || j || '@a' || (j // 5) || '.scale.example' as email,
        case when u('phone_null', j) < 0.3 then null else '+49 30 ' || (1000000 + pick('phone', j, 8999999)) end as phone,
        ['Europe/Berlin', 'Europe/London', 'Europe/Paris', 'America/New_York', 'America/Chicago', 'Asia/Tokyo'][1 + pick('tz', j, 6)] as timezone,
        u('dnc', j) < 0.03 as do_not_contact,
        ago(100 + u('con_created', j) * 1000) as created_at
    from range({n["contacts"]}) t(j);
    alter table g_contacts add column updated_at timestamp;
    update g_contacts set updated_at = after(created_at, u('con_upd', idx) * 90);

    create or replace table g_deals as
    with base as (
        select k as idx, k // 10 as account_idx, 5 * (k // 10) + pick('deal_contact', k, 5) as contact_idx,
            u('stage', k) as s, a.seg, a.owner_email
        from range({n["deals"]}) t(k) join g_accounts a on a.idx = k // 10
    ), staged as (
        select *,
            case when seg = 'dormant' then (case when s < 0.6 then 'won' else 'lost' end)
                 when s < 0.15 then 'lead' when s < 0.30 then 'qualified' when s < 0.50 then 'quote_sent'
                 when s < 0.60 then 'negotiation' when s < 0.85 then 'won' else 'lost' end as stage
        from base
    ), timed as (
        select *,
            case when stage = 'quote_sent' and u('quote_edge', idx) < 0.02 then ago(7)  -- exactly on the threshold
                 when stage = 'quote_sent' then ago(u('quote_age', idx) * 40)
                 when seg = 'dormant' then ago(100 + u('chg_age', idx) * 600)
                 else ago(1 + u('chg_age', idx) * 365) end as stage_changed_at
        from staged
    )
    select idx, kid('D', idx) as deal_id, kid('A', account_idx) as account_id, kid('C', contact_idx) as contact_id,
        account_idx, contact_idx, owner_email, 'Deal ' || idx as name, stage,
        cast(round(1000 + u('amount', idx) * 99000, 2) as decimal(18, 2)) as amount,
        case when u('cur', idx) < 0.7 then 'EUR' else 'USD' end as currency,
        case when stage = 'quote_sent' then stage_changed_at
             when stage in ('negotiation', 'won', 'lost') and u('had_quote', idx) < 0.7
                 then after(stage_changed_at, -u('quote_before', idx) * 20) end as quote_sent_at,
        stage_changed_at,
        case when stage in ('won', 'lost') then stage_changed_at end as closed_at,
        after(stage_changed_at, -(1 + u('deal_created', idx) * 90)) as created_at,
        stage_changed_at as updated_at
    from timed;

    create or replace table g_activities as
    with base as (
        select m as idx, m // 10 as contact_idx, (m // 10) // 5 as account_idx,
            case when u('act_deal', m) < 0.4 then 10 * ((m // 10) // 5) + pick('act_deal_pick', m, 10) end as deal_idx,
            u('kind', m) as s
        from range({n["activities"]}) t(m)
    )
    select b.idx, kid('ACT', b.idx) as activity_id, kid('C', b.contact_idx) as contact_id,
        case when b.deal_idx is not null then kid('D', b.deal_idx) end as deal_id, a.owner_email,
        case when s < 0.30 then 'email_out' when s < 0.45 then 'email_in' when s < 0.60 then 'call'
             when s < 0.70 then 'meeting' when s < 0.90 then 'note' else 'task' end as kind,
        case
            -- a touch at the very moment of the quote: not a follow-up
            when d.quote_sent_at is not null and u('act_edge', b.idx) < 0.05 then d.quote_sent_at
            when a.seg = 'dormant' then ago(95 + u('occ', b.idx) * 900)
            when a.seg = 'quiet' then ago(45 + u('occ', b.idx) * 600)
            else ago(u('occ', b.idx) * 365) end as occurred_at,
        case when u('subj_null', b.idx) < 0.2 then null else 'Activity ' || b.idx end as subject
    from base b join g_accounts a on a.idx = b.account_idx
    left join g_deals d on d.idx = b.deal_idx and a.seg <> 'dormant';

    create or replace table g_invoices as
    with base as (
        select n as idx, u('inv_state', n) as s,
            case when u('due_edge', n) < 0.01 then ago(30 + 30)
                 when u('due_edge', n) < 0.02 then ago(-14 + 30)
                 when u('due_edge', n) < 0.03 then ago(30)
                 else ago(u('issued', n) * 400) end as issued_at
        from range({n["invoices"]}) t(n)
    ), dated as (
        select *, issued_at + interval 30 day as due_at from base
    ), stated as (
        select *,
            case when due_at > {at} then (case when s < 0.85 then 'open' else 'paid' end)
                 else (case when s < 0.20 then 'open' when s < 0.25 then 'void' else 'paid' end) end as status
        from dated
    )
    select idx, kid('INV', idx) as invoice_id, kid('A', idx // 5) as account_id, kid('C', idx) as contact_id,
        cast(round(50 + u('inv_amount', idx) * 20000, 2) as decimal(18, 2)) as amount,
        case when u('cur', idx) < 0.7 then 'EUR' else 'USD' end as currency,
        issued_at, due_at,
        case when status = 'paid' or (status = 'open' and u('open_paid_at', idx) < 0.01)
             then date_trunc('second', issued_at + (({at} - issued_at) * u('paid', idx))) end as paid_at,
        status
    from stated;
    alter table g_invoices add column updated_at timestamp;
    update g_invoices set updated_at = coalesce(paid_at, issued_at);

    create or replace table g_tickets as
    with base as (
        select t as idx, t // 2 as account_idx, u('tstat', t) as s, u('prio', t) as p from range({n["tickets"]}) tt(t)
    ), stated as (
        select *,
            case when s < 0.3 then 'open' when s < 0.5 then 'pending' else 'closed' end as status,
            case when p < 0.3 then 'low' when p < 0.7 then 'normal' when p < 0.9 then 'high' else 'urgent' end as priority,
            case when u('wait_edge', idx) < 0.02 then ago(1) else ago(u('upd', idx) * 20) end as updated_at
        from base
    )
    select idx, kid('T', idx) as ticket_id, kid('A', account_idx) as account_id,
        kid('C', 5 * account_idx + pick('ticket_contact', idx, 5)) as contact_id, priority, status,
        'Ticket ' || idx || ': question about "invoice", order & delivery' as subject,
        'Hello,' || chr(10) || 'the delivery of order ' || idx || ' is late, please check.' || chr(10) || 'Thanks' as body,
        case when status = 'open' then updated_at else after(updated_at, -u('opened', idx) * 30) end as opened_at,
        updated_at
    from stated;

    create or replace table g_nps_responses as
    select r as idx, kid('N', r) as response_id, kid('C', pick('nps_contact', r, {n["contacts"]})) as contact_id,
        cast(pick('score', r, 11) as integer) as score,
        case when u('comment_null', r) < 0.5 then null
             else 'Answer ' || r || case when u('comment_nl', r) < 0.2 then chr(10) || 'second line' else '' end end as comment,
        case when u('nps_edge', r) < 0.01 then ago(2)
             when u('nps_edge', r) < 0.02 then ago(0)
             when u('nps_recent', r) < 0.1 then ago(u('resp', r) * 7)
             else ago(u('resp', r) * 365) end as responded_at
    from range({n["nps_responses"]}) t(r);

    create or replace table g_contracts as
    with base as (
        select q as idx,
            case when u('end_edge', q) < 0.01 then ago(-60) when u('end_edge', q) < 0.02 then ago(0)
                 else ago(450 - u('end', q) * 900) end as end_at
        from range({n["contracts"]}) t(q)
    )
    select idx, kid('K', idx) as contract_id, kid('A', idx) as account_id,
        end_at - interval 365 day as start_at, end_at, u('auto', idx) < 0.4 as auto_renew,
        cast(round(1000 + u('value', idx) * 200000, 2) as decimal(18, 2)) as value,
        case when end_at >= {at} then (case when u('kstat', idx) < 0.9 then 'active' else 'cancelled' end)
             else (case when u('kstat', idx) < 0.8 then 'expired' else 'cancelled' end) end as status
    from base;
    """)


def _changed_tables(con: duckdb.DuckDBPyConnection, n: dict[str, int], as_of: datetime) -> dict[str, int]:
    """c_<object>: the world one day later, 1 % of its records new or changed; manifest in `changes`."""
    for name in OBJECT_NAMES:
        con.execute(f"create or replace table c_{name} as select * from g_{name}")
    new_acts = max(1, round(n["activities"] * CHANGE_SHARE))
    stage_changes = max(1, round(n["deals"] * CHANGE_SHARE))
    payments = max(1, round(n["invoices"] * CHANGE_SHARE))
    new_tickets = max(1, round(n["tickets"] * CHANGE_SHARE))
    first_act, first_ticket, contacts = n["activities"], n["tickets"], n["contacts"]
    con.execute(f"""
    create or replace table changes (object varchar, record_key varchar, change varchar);

    insert into c_activities
    with base as (
        select m as idx, pick('new_act_contact', m, {contacts}) as contact_idx from range({first_act}, {first_act + new_acts}) t(m)
    )
    select b.idx, kid('ACT', b.idx), kid('C', b.contact_idx),
        case when u('act_deal', b.idx) < 0.4 then kid('D', 10 * (b.contact_idx // 5) + pick('act_deal_pick', b.idx, 10)) end,
        a.owner_email,
        ['email_out', 'email_in', 'call', 'meeting', 'note', 'task'][1 + pick('kind', b.idx, 6)],
        after({_ts(as_of)}, u('new_occ', b.idx)), 'New activity ' || b.idx
    from base b join g_accounts a on a.idx = b.contact_idx // 5;
    insert into changes select 'activities', kid('ACT', m), 'new' from range({first_act}, {first_act + new_acts}) t(m);

    create or replace temp table moved as
    select idx from g_deals where stage not in ('won', 'lost') order by u('move', idx) limit {stage_changes};
    update c_deals set
        stage = case stage when 'lead' then 'qualified' when 'qualified' then 'quote_sent'
                           when 'quote_sent' then 'negotiation' else 'won' end,
        stage_changed_at = after({_ts(as_of)}, u('moved_at', idx)),
        updated_at = after({_ts(as_of)}, u('moved_at', idx))
    where idx in (select idx from moved);
    update c_deals set quote_sent_at = stage_changed_at where idx in (select idx from moved) and stage = 'quote_sent';
    update c_deals set closed_at = stage_changed_at where idx in (select idx from moved) and stage = 'won';
    insert into changes select 'deals', kid('D', idx), 'changed' from moved;

    create or replace temp table paid as
    select idx from g_invoices where status = 'open' order by u('pay', idx) limit {payments};
    update c_invoices set status = 'paid', paid_at = after({_ts(as_of)}, u('paid_now', idx)),
        updated_at = after({_ts(as_of)}, u('paid_now', idx))
    where idx in (select idx from paid);
    insert into changes select 'invoices', kid('INV', idx), 'changed' from paid;

    insert into c_tickets
    select t as idx, kid('T', t), kid('A', pick('new_ticket_acc', t, {n["accounts"]})),
        kid('C', 5 * pick('new_ticket_acc', t, {n["accounts"]}) + pick('ticket_contact', t, 5)),
        ['low', 'normal', 'high', 'urgent'][1 + pick('prio', t, 4)], 'open',
        'New ticket ' || t, 'Opened after the full pass.', after({_ts(as_of)}, u('new_open', t)),
        after({_ts(as_of)}, u('new_open', t))
    from range({first_ticket}, {first_ticket + new_tickets}) tt(t);
    insert into changes select 'tickets', kid('T', t), 'new' from range({first_ticket}, {first_ticket + new_tickets}) tt(t);
    """)
    return {"new activities": new_acts, "deal stage changes": stage_changes, "invoice payments": payments,
            "new tickets": new_tickets}  # fmt: skip


def _render(obj: SorObject, table: str) -> str:
    """A select of `table` as contract text, in contract column order, plus `idx` for ordering."""
    parts = []
    for col in obj.columns:
        if col.kind in (Kind.EVENT_TS, Kind.PLANNED_TS):
            parts.append(f"strftime({col.name}, '%Y-%m-%d %H:%M:%S') as {col.name}")
        else:
            parts.append(f"cast({col.name} as varchar) as {col.name}")
    return f"select idx, {', '.join(parts)} from {table}"


def broken_reasons(obj: SorObject) -> dict[str, tuple[str, str]]:
    """Per reason code this object can show: (column, SQL text replacing that column's value)."""
    cols = obj.columns
    first = {kind: next((c for c in cols if c.kind is kind), None) for kind in Kind}
    event = next((c for c in cols if c.kind is Kind.EVENT_TS and c.required), None)
    any_ts = next((c for c in cols if c.kind in (Kind.EVENT_TS, Kind.PLANNED_TS) and c.required), None)
    line = next((c for c in cols if c.kind is Kind.LINE and c.required), first[Kind.LINE])
    reasons: dict[str, tuple[str, str]] = {"missing_key": (obj.key, "null")}
    copy_col = next(c for c in cols if c.kind in (Kind.LINE, Kind.TEXT, Kind.MONEY) and c.name != obj.key)
    changed = (
        "'98765.43'" if copy_col.kind is Kind.MONEY else f"coalesce({copy_col.name}, '') || ' (other copy)'"
    )
    reasons["conflicting_duplicate"] = (copy_col.name, changed)
    if any_ts is not None:
        reasons["unparseable"] = (any_ts.name, "'sometime last week'")
        reasons["impossible_date"] = (any_ts.name, "'2026-02-30 10:00:00'")
    if event is not None:
        reasons["future_timestamp"] = (event.name, "'{future}'")
    if first[Kind.ENUM] is not None:
        reasons["out_of_domain"] = (first[Kind.ENUM].name, "'bogus'")
    if first[Kind.MONEY] is not None:
        reasons["negative_amount"] = (first[Kind.MONEY].name, "'-5.00'")
    if first[Kind.SCORE] is not None:
        reasons["score_out_of_range"] = (first[Kind.SCORE].name, "'11'")
    if first[Kind.EMAIL] is not None:
        reasons["invalid_email"] = (first[Kind.EMAIL].name, "'not-an-email'")
    if first[Kind.TIMEZONE] is not None:
        reasons["unknown_timezone"] = (first[Kind.TIMEZONE].name, "'Mars/Olympus_Mons'")
    if line is not None:
        reasons["control_character"] = (line.name, "'Injected' || chr(10) || 'Bcc: attacker@example.org'")
    if obj.references:
        reasons["broken_reference"] = (obj.references[0].name, "'NOPE-' || idx")
    return reasons


def _broken_tables(
    con: duckdb.DuckDBPyConnection, n: dict[str, int], seed: int, as_of: datetime
) -> dict[str, int]:
    """b_<object>: rendered broken rows (fresh keys nothing refers to), and `planted_<object>`."""
    future = (as_of + timedelta(days=400)).strftime("%Y-%m-%d %H:%M:%S")
    planted: dict[str, int] = {}
    for name, obj in OBJECTS.items():
        reasons = broken_reasons(obj)
        total = max(len(reasons), round(n[name] * BROKEN_SHARE))
        per_reason = {
            r: total // len(reasons) + (1 if i < total % len(reasons) else 0) for i, r in enumerate(reasons)
        }
        selects = []
        for position, (reason, (column, value)) in enumerate(reasons.items()):
            count = per_reason[reason]
            copies = 2 if reason == "conflicting_duplicate" else 1
            key = f"'X{ID_PREFIX[name]}{position:02d}-' || lpad(cast(b.pos as varchar), 7, '0')"
            for copy in range(copies):
                exprs = []
                for col in obj.columns:
                    if col.name == obj.key and reason != "missing_key":
                        exprs.append(f"{key} as {col.name}")
                    elif col.name == column and (reason != "conflicting_duplicate" or copy == 1):
                        exprs.append(f"{value.format(future=future)} as {col.name}")
                    else:
                        exprs.append(f"r.{col.name}")
                selects.append(
                    f"select {position}::bigint * 1000000000 + b.pos * 2 + {copy} as ord, '{reason}' as reason, "
                    f"{', '.join(exprs)} from range({count}) b(pos) "
                    f"join r_{name} r on r.idx = hash({seed}, '{name}:{reason}', b.pos) % {n[name]}"
                )
        con.execute(
            f"create or replace table b_{name} as select * from ({' union all '.join(selects)}) order by ord"
        )
        planted[name] = con.execute(f"select count(*) from b_{name}").fetchone()[0]
    return planted


def _write_folder(
    con: duckdb.DuckDBPyConnection, prefix: str, folder: Path, formats: tuple[str, ...], progress: Progress
) -> None:
    for fmt in formats:
        (folder / fmt).mkdir(parents=True, exist_ok=True)
    manifests = []
    for name, obj in OBJECTS.items():
        columns = ", ".join(obj.column_names)
        good = con.execute(f"select count(*) from {prefix}_{name}").fetchone()[0]
        query = (
            f"select {columns} from (select 0 as part, idx as ord, * exclude (idx) from ({_render(obj, f'{prefix}_{name}')}) "
            f"union all by name select 1 as part, ord, * exclude (ord, reason) from b_{name}) order by part, ord"
        )
        for fmt in formats:
            target = folder / fmt / f"{name}.{fmt}"
            options = "format csv, header true" if fmt == "csv" else "format parquet, compression zstd"
            con.execute(f"copy ({query}) to '{target}' ({options})")
        manifests.append(
            f"select '{name}' as object, {obj.key} as record_key, {good} + row_number() over (order by ord) as row_number, "
            f"reason from b_{name}"
        )
        progress(
            f"  {folder.name}/{name}: {good:,} rows + {con.execute(f'select count(*) from b_{name}').fetchone()[0]} broken"
        )
    con.execute(
        f"copy ({' union all '.join(manifests)}) to '{folder / 'planted_broken.parquet'}' (format parquet)"
    )


def generate(
    out: Path,
    size: str = "XS",
    seed: int = DEFAULT_SEED,
    as_of: datetime = DEFAULT_AS_OF,
    formats: tuple[str, ...] = FORMATS,
    progress: Progress = lambda _line: None,
) -> WorldInfo:
    """Write the world (base and changed folders, manifests) under `out`, replacing what was there."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; sizes are {', '.join(SIZES)}")
    started = time.perf_counter()
    out = Path(out)
    for part in ("base", "changed"):
        shutil.rmtree(out / part, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    scratch = out / "_generate.duckdb"
    scratch.unlink(missing_ok=True)
    n = counts_for(size)
    con = duckdb.connect(str(scratch))
    try:
        con.execute(f"set temp_directory = '{out / '_generate.tmp'}'")
        con.execute(_macros(seed, as_of))
        progress(f"generating size {size} (seed {seed}): " + ", ".join(f"{v:,} {k}" for k, v in n.items()))
        _typed_tables(con, n, as_of)
        for name, obj in OBJECTS.items():
            con.execute(f"create or replace table r_{name} as {_render(obj, f'g_{name}')}")
        broken = _broken_tables(con, n, seed, as_of)
        _write_folder(con, "g", out / "base", formats, progress)
        changes = _changed_tables(con, n, as_of)
        _write_folder(con, "c", out / "changed", formats, progress)
        con.execute(f"copy changes to '{out / 'changes.parquet'}' (format parquet)")
        progress("  changes: " + ", ".join(f"{v:,} {k}" for k, v in changes.items()))
    finally:
        con.close()
        scratch.unlink(missing_ok=True)
        shutil.rmtree(out / "_generate.tmp", ignore_errors=True)
    info = WorldInfo(
        size=size,
        seed=seed,
        as_of=as_of.isoformat(sep=" "),
        as_of_changed=(as_of + INCREMENT).isoformat(sep=" "),
        rows=n,
        broken=broken,
        changes=changes,
        seconds=round(time.perf_counter() - started, 1),
    )
    (out / "world.json").write_text(json.dumps(asdict(info), indent=2) + "\n", encoding="utf-8")
    return info


def read_info(out: Path) -> WorldInfo:
    return WorldInfo(**json.loads((Path(out) / "world.json").read_text(encoding="utf-8")))
