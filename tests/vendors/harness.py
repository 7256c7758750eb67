"""What the shared connector contract suite needs from each source: a connector pointed at a running
server (a vendor stand-in on 127.0.0.1, or a real PostgreSQL), and a way to change the server's data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from connectors.base import Connector, Record


class SourceHarness(Protocol):
    name: str

    def connector(self) -> Connector:
        """A connector configured for this harness's server (same settings every call)."""
        ...

    def seed(self, records: Mapping[str, Sequence[Record]]) -> None:
        """Replace the server's data with these canonical records (contract text, as in the CSV files),
        stored in the vendor's own shape (field names, picklist values, date formats)."""
        ...

    def upsert(self, object: str, record: Record) -> None:
        """Create or change one record (canonical text); the server bumps its modified time."""
        ...

    def delete(self, object: str, key: str) -> None:
        """Delete one record the way the vendor does (Zoho deleted list, HubSpot archive, SQL delete)."""
        ...

    def close(self) -> None:
        """Stop the server and release everything."""
        ...
