"""Per-channel circuit breaker for one dispatch pass: counts consecutive retryable failures and opens at a
threshold, so a dead channel is not called again (each call may cost several retries with backoff).

Thread-safe: the dispatcher's worker threads record results as they complete.
"""

from __future__ import annotations

import threading


class CircuitBreaker:
    """Open after `threshold` consecutive failures that may pass on their own (retryable or uncertain).

    A success or a permanent failure (the channel answered, the message itself was refused) resets the
    count. Once open it stays open for the rest of the pass; the next pass starts closed.
    """

    def __init__(self, threshold: int) -> None:
        if threshold < 1:
            raise ValueError(f"circuit breaker threshold must be at least 1, got {threshold}")
        self.threshold = threshold
        self.consecutive = 0
        self.last_reason = ""
        self.opened_after: int | None = None
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        return self.opened_after is not None

    def record(self, transient_failure: bool, reason: str = "") -> None:
        with self._lock:
            if not transient_failure:
                self.consecutive = 0
                return
            self.consecutive += 1
            self.last_reason = reason
            if self.opened_after is None and self.consecutive >= self.threshold:
                self.opened_after = self.consecutive

    def headroom(self) -> int:
        """How many more failures in a row the channel may have before the circuit opens (at least 1)."""
        with self._lock:
            return max(1, self.threshold - self.consecutive)

    def describe(self, channel: str) -> str:
        return (
            f"circuit open for {channel} after {self.opened_after} consecutive failures: {self.last_reason}"
        )
