"""The small interface every System-of-Record connector implements.

A connector only talks to its source: it pages through one canonical object at a time and hands back
records already mapped onto the canonical contract (docs/sor_contract.md) as *text*, exactly as a
contract CSV cell would hold it. Validation, quarantine, cursors, the local mirror and history belong to
the sync (connectors/sync.py), so every source is judged by the same rules.
"""

from __future__ import annotations

import hashlib
import math
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, runtime_checkable

# One record: canonical column name -> contract text (None = null). Timestamps as ISO 8601 with an offset
# (or 'YYYY-MM-DD HH:MM:SS' UTC), booleans 'true'/'false', money as a plain decimal string. Vendor fields
# that have no canonical column may be passed under their own names: the sync reports them as drift.
Record = dict[str, str | None]


class ConnectorError(RuntimeError):
    """The source could not be read; the message names the source, object, request and what was kept."""


class ConnectorConfigError(ValueError):
    """A source's configuration is missing a key or holds an invalid value; the message names the key."""


# Incremental reads re-read this much before their cursor: a change stamped at the cursor's second, or one
# that became visible after the previous read (a late commit), lies there. Source config: overlap_seconds.
DEFAULT_OVERLAP_SECONDS = 300


def overlap_setting(config: Mapping[str, Any], label: str) -> timedelta:
    """The source's `overlap_seconds` (default 300) as a timedelta; `label` names the key in errors."""
    value = config.get("overlap_seconds", DEFAULT_OVERLAP_SECONDS)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ConnectorConfigError(f"{label} must be a non-negative number of seconds, got {value!r}")
    return timedelta(seconds=value)


def window_digest(entries: Iterable[tuple[str, str]]) -> str:
    """An order-free digest of (identity, version) pairs: '<count>-<sum of their hashes mod 2^64>'."""
    count = total = 0
    for identity, version in entries:
        hashed = hashlib.sha256(f"{identity}\x1f{version}".encode()).digest()
        total = (total + int.from_bytes(hashed[:8], "big")) % (1 << 64)
        count += 1
    return f"{count}-{total:016x}"


EMPTY_WINDOW = window_digest(())


class OverlapWindow:
    """What a read handed over within `overlap` before its cursor, kept so the cursor can carry its digest.

    Every incremental read re-reads that window, so a `changed()` probe that only asked "anything after
    the cursor?" would miss a late change inside it, and one that asked "anything inside it?" would say
    yes forever. The probe instead re-reads the window and compares its digest with the cursor's. An
    identity seen again replaces its earlier version (a record changed during the read is one record).
    """

    def __init__(self, overlap: timedelta) -> None:
        self.overlap = overlap
        self._latest: dict[str, tuple[str, datetime]] = {}
        self._arrivals: deque[tuple[datetime, str, str]] = deque()

    def add(self, identity: str, version: str, moment: datetime) -> None:
        self._latest[identity] = (version, moment)
        self._arrivals.append((moment, identity, version))

    def digest(self, watermark: datetime) -> str:
        """The digest of what lies in (watermark - overlap, watermark]; older entries are forgotten
        (watermarks only grow within a read)."""
        edge = watermark - self.overlap
        while self._arrivals and self._arrivals[0][0] <= edge:
            moment, identity, version = self._arrivals.popleft()
            if self._latest.get(identity) == (version, moment):
                del self._latest[identity]
        return window_digest(
            (identity, version)
            for identity, (version, moment) in self._latest.items()
            if edge < moment <= watermark
        )


@dataclass(frozen=True)
class Page:
    """One committed unit of a sync: upserts, deletions and the cursor that is valid once they are stored.

    `cursor` is opaque to the sync and is stored in the same transaction as the page's records, so a sync
    killed between pages resumes after the last committed page with no gap and no duplicate.
    """

    object: str
    records: list[Record] = field(default_factory=list)
    deleted_keys: list[str] = field(default_factory=list)
    cursor: str | None = None


@dataclass(frozen=True)
class SyncPlan:
    """How a sync reads one object: in full (cursor None) or incrementally from a stored cursor.

    In a full read the set of keys returned is the whole object: keys not seen are deleted at the end.
    """

    object: str
    cursor: str | None

    @property
    def full(self) -> bool:
        return self.cursor is None


@runtime_checkable
class Connector(Protocol):
    """A source of canonical objects."""

    name: str

    def objects(self) -> Sequence[str]:
        """The canonical objects this source provides (a subset of the contract's eight)."""
        ...

    def changed(self, cursors: Mapping[str, str | None]) -> list[str]:
        """A cheap probe: the objects with anything new since their cursor (all of them when a cursor is
        None). Used by sensors; must not read whole objects."""
        ...

    def pages(self, plan: SyncPlan) -> Iterator[Page]:
        """Read one object from `plan.cursor` (None: everything), page by page, oldest change first."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
