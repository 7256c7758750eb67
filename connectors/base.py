"""The small interface every System-of-Record connector implements.

A connector only talks to its source: it pages through one canonical object at a time and hands back
records already mapped onto the canonical contract (../shared/SOR_CONTRACT.md) as *text*, exactly as a
contract CSV cell would hold it. Validation, quarantine, cursors, the local mirror and history belong to
the sync (connectors/sync.py), so every source is judged by the same rules.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

# One record: canonical column name -> contract text (None = null). Timestamps as ISO 8601 with an offset
# (or 'YYYY-MM-DD HH:MM:SS' UTC), booleans 'true'/'false', money as a plain decimal string. Vendor fields
# that have no canonical column may be passed under their own names: the sync reports them as drift.
Record = dict[str, str | None]


class ConnectorError(RuntimeError):
    """The source could not be read; the message names the source, object, request and what was kept."""


class ConnectorConfigError(ValueError):
    """A source's configuration is missing a key or holds an invalid value; the message names the key."""


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
