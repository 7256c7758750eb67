"""Turns a Dagster run's step events into `actionlayer.progress` stages: the pass's stages by name, with
the row counts the steps report in their materializations."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from actionlayer.progress import Progress

# step key -> the stage a person reads; connector steps (sync_<source>) are load stages too
STAGES = {
    "sor_files": "load + quality gate",
    "sor_quality_tables": "quality tables",
    "decision_models": "decision models",
    "action_ledger": "proposals / ledger",
    "review_decisions": "review import",
    "review_tables": "review export",
    "action_dispatch": "dispatch",
    "outcome_marts": "marts",
}
# materialization metadata worth showing per stage, summed over the step's materializations
COUNTED = {
    "rows_loaded": "rows loaded",
    "rows_quarantined": "rows quarantined",
    "candidates": "candidates",
    "new_events": "ledger events",
    "files": "files",
    "applied": "decisions applied",
    "due": "due",
    "delivered": "delivered",
    "failed": "failed",
}


def stage_name(step_key: str) -> str:
    if step_key.startswith("sync_"):
        return f"sync {step_key.removeprefix('sync_')} + quality gate"
    return STAGES.get(step_key, step_key)


class StepProgress:
    """An instance event listener for one run (`DagsterInstance.add_event_listener`); `settle` reports, from
    the run's result, any step whose end the listener did not see, so every stage is printed once."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self._counts: dict[str, dict[str, int]] = defaultdict(dict)
        self._models: dict[str, int] = defaultdict(int)
        self._finished: set[str] = set()

    def __call__(self, entry: Any) -> None:
        if entry.dagster_event is not None and entry.step_key is not None:
            self.handle(entry.step_key, entry.dagster_event)

    def settle(self, events: Any) -> None:
        missed = [e for e in events if e.step_key and e.step_key not in self._finished]
        self._counts.clear()
        self._models.clear()
        for event in missed:
            if event.event_type_value != "STEP_START":
                self.handle(event.step_key, event)

    def handle(self, step: str, event: Any) -> None:
        kind = event.event_type_value
        stage = stage_name(step)
        if step in self._finished:
            return
        if kind == "STEP_START":
            self.progress.start(stage)
        elif kind == "ASSET_MATERIALIZATION":
            self._count(step, event.step_materialization_data.materialization.metadata)
        elif kind == "STEP_SKIPPED":
            # Dagster skips a step whose upstream output was never produced; saying so beats silence
            self._finished.add(step)
            self.progress.finish(stage, skipped=True)
        elif kind in ("STEP_SUCCESS", "STEP_FAILURE"):
            self._finished.add(step)
            counts = dict(self._counts.pop(step, {}))
            models = self._models.pop(step, 0)
            if step in ("decision_models", "outcome_marts") and models:
                counts = {"models": models, **counts}
            duration = getattr(event.event_specific_data, "duration_ms", None)
            seconds = duration / 1000 if isinstance(duration, int | float) else None
            self.progress.finish(stage, counts, seconds=seconds, failed=kind == "STEP_FAILURE")

    def _count(self, step: str, metadata: dict[str, Any]) -> None:
        self._models[step] += 1
        counts = self._counts[step]
        for key, label in COUNTED.items():
            value = getattr(metadata.get(key), "value", None)
            if isinstance(value, int) and not isinstance(value, bool):
                counts[label] = counts.get(label, 0) + value
