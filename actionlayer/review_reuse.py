"""Which approvers' review files from an earlier export are still current, so an export writes only the
files whose content would change (a sensor's hourly pass leaves an approver's unchanged table alone
instead of sending them a new copy of it).

An approver's files are a pure function of what is exported to them (each action's ledger events and the
four-eyes flag, the send checks routed to them), the file format and the signing key. Their fingerprint is
recorded per export and approver in `ops.review_exports`; an export that computes the same fingerprint for
the same folder, while the earlier files are all still there and not expired, keeps them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

# bump when what a review file shows, or how it is laid out or signed, changes: every file is written again
FILE_FORMAT = 1

_TABLE = "ops.review_exports"


def ensure_table(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("create schema if not exists ops")
    con.execute(
        f"""create table if not exists {_TABLE} (
            out_dir varchar not null,
            approver varchar not null,
            as_of timestamp not null,
            file_stem varchar not null,
            fingerprint varchar not null,
            expires_at timestamp not null,
            written boolean not null
        )"""
    )


def fingerprint(
    approver: str,
    entries: Iterable[tuple[Mapping[str, Any], Any, bool]],
    needs_checking: Iterable[Mapping[str, Any]],
    key: bytes,
) -> str:
    """What one approver's files would hold, as a digest; another signing key is another fingerprint.

    The ledger is append-only and a state row is an action's latest event, so an action's id and latest
    `seq` stand for everything its row shows (message, review history, expiry): any change to those is a
    new event with a higher seq. The four-eyes flag is the one input from outside the ledger."""
    digest = hashlib.sha256(hmac.new(key, b"actionlayer review files", "sha256").digest())
    parts = [f"{FILE_FORMAT}", approver]
    parts += [f"{state['action_id']}:{state['seq']}:{int(four_eyes)}" for state, _, four_eyes in entries]
    parts.append("needs checking")
    parts += [f"{state['action_id']}:{state['seq']}" for state in needs_checking]
    digest.update("\x1f".join(parts).encode())
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class Export:
    """One approver's files as an export left them."""

    file_stem: str
    fingerprint: str
    expires_at: datetime


def latest(con: duckdb.DuckDBPyConnection, out_dir: Path) -> dict[str, Export]:
    """Per approver, the files the latest export into `out_dir` left current."""
    ensure_table(con)
    rows = con.execute(
        f"""select approver, file_stem, fingerprint, expires_at from {_TABLE}
        where out_dir = ?
        -- the export recorded last, whatever its as-of (a replay may export an earlier time after a later one)
        qualify row_number() over (partition by approver order by rowid desc) = 1""",
        [str(out_dir)],
    ).fetchall()
    return {approver: Export(stem, digest, expires) for approver, stem, digest, expires in rows}


def record(
    con: duckdb.DuckDBPyConnection,
    out_dir: Path,
    as_of: datetime,
    exports: Mapping[str, Export],
    written: Iterable[str],
) -> None:
    """Append this export's files per approver (`written`: the approvers whose files it wrote)."""
    ensure_table(con)
    if not exports:
        return
    fresh = set(written)
    approvers = sorted(exports)
    # one statement for the whole export: the lists are zipped row by row
    con.execute(
        f"""insert into {_TABLE}
        select ?, unnest(?::varchar[]), ?, unnest(?::varchar[]), unnest(?::varchar[]), unnest(?::timestamp[]),
               unnest(?::boolean[])""",
        [
            str(out_dir),
            approvers,
            as_of,
            [exports[a].file_stem for a in approvers],
            [exports[a].fingerprint for a in approvers],
            [exports[a].expires_at for a in approvers],
            [a in fresh for a in approvers],
        ],
    )
