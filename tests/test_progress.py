"""Stage progress: one plain line per finished stage when piped, a live status on a terminal, and the
Dagster step listener that feeds it from a real run's events."""

from __future__ import annotations

import io

from rich.console import Console

from actionlayer.progress import Progress
from orchestration.progress import StepProgress, stage_name


def _piped() -> tuple[Progress, io.StringIO]:
    out = io.StringIO()
    return Progress(Console(file=out, force_terminal=False, width=200)), out


def test_piped_progress_prints_one_plain_line_per_finished_stage() -> None:
    progress, out = _piped()
    with progress.running("a pass"):
        progress.start("load + quality gate")
        progress.finish("load + quality gate", {"rows loaded": 1234567, "rows quarantined": 3}, seconds=12.34)
        progress.start("marts")
        progress.finish("marts", seconds=0.5, failed=True)
    assert out.getvalue().splitlines() == [
        "load + quality gate: done in 12.3 s (1,234,567 rows loaded, 3 rows quarantined)",
        "marts: FAILED after 0.5 s",
    ]
    assert [record.stage for record in progress.finished] == ["load + quality gate", "marts"]


def test_terminal_progress_marks_each_finished_stage() -> None:
    out = io.StringIO()
    progress = Progress(Console(file=out, force_terminal=True, width=200, color_system=None))
    assert progress.live
    with progress.running("a pass"):
        progress.start("dispatch")
        progress.finish("dispatch", {"delivered": 5})
    assert "✓ dispatch: done in" in out.getvalue()
    assert "(5 delivered)" in out.getvalue()


def test_step_names_read_as_the_pass_stages() -> None:
    assert stage_name("sor_files") == "load + quality gate"
    assert stage_name("sync_zoho") == "sync zoho + quality gate"
    assert stage_name("action_ledger") == "proposals / ledger"
    assert stage_name("something_new") == "something_new"


class _Value:
    def __init__(self, value: object) -> None:
        self.value = value


class _Materialization:
    def __init__(self, metadata: dict) -> None:
        self.metadata = metadata


class _Event:
    def __init__(self, kind: str, metadata: dict | None = None, duration_ms: float | None = None) -> None:
        self.event_type_value = kind
        self.event_specific_data = type("S", (), {"duration_ms": duration_ms})
        if metadata is not None:
            self.step_materialization_data = type("D", (), {"materialization": _Materialization(metadata)})


class _Entry:
    def __init__(self, step: str, event: _Event) -> None:
        self.step_key = step
        self.dagster_event = event


def test_step_listener_sums_row_counts_over_a_steps_materializations() -> None:
    progress, out = _piped()
    listener = StepProgress(progress)
    listener(_Entry("sor_files", _Event("STEP_START")))
    for loaded, bad in ((10, 1), (5, 0)):
        meta = {"rows_loaded": _Value(loaded), "rows_quarantined": _Value(bad), "as_of": _Value("x")}
        listener(_Entry("sor_files", _Event("ASSET_MATERIALIZATION", meta)))
    listener(_Entry("sor_files", _Event("STEP_SUCCESS")))
    listener(_Entry("decision_models", _Event("STEP_START")))
    listener(_Entry("decision_models", _Event("ASSET_MATERIALIZATION", {})))
    listener(_Entry("decision_models", _Event("STEP_FAILURE")))
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("load + quality gate: done in ")
    assert lines[0].endswith("(15 rows loaded, 1 rows quarantined)")
    assert lines[1].startswith("decision models: FAILED after ") and lines[1].endswith("(1 models)")


def test_a_step_end_the_listener_missed_is_reported_once_from_the_run_result() -> None:
    progress, out = _piped()
    listener = StepProgress(progress)
    listener(_Entry("action_ledger", _Event("STEP_START")))
    listener(_Entry("action_ledger", _Event("STEP_SUCCESS")))
    # the run's own event list, with the marts' end that never reached the listener
    events = [
        _StepEvent("action_ledger", _Event("STEP_SUCCESS")),
        _StepEvent("outcome_marts", _Event("STEP_START")),
        _StepEvent("outcome_marts", _Event("ASSET_MATERIALIZATION", {})),
        _StepEvent("outcome_marts", _Event("STEP_SUCCESS", duration_ms=2500)),
    ]
    listener.settle(events)
    listener.settle(events)
    lines = out.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines] == ["proposals / ledger", "marts"]
    assert lines[1] == "marts: done in 2.5 s (1 models)"


class _StepEvent(_Event):
    def __init__(self, step: str, event: _Event) -> None:
        self.__dict__.update(event.__dict__)
        self.step_key = step


def test_a_skipped_step_is_said_to_be_skipped_not_left_out() -> None:
    progress, out = _piped()
    listener = StepProgress(progress)
    listener(_Entry("action_dispatch", _Event("STEP_SUCCESS")))
    listener(_Entry("outcome_marts", _Event("STEP_SKIPPED")))
    listener.settle([_StepEvent("outcome_marts", _Event("STEP_SKIPPED"))])
    lines = out.getvalue().splitlines()
    assert lines == [
        "dispatch: done in 0.0 s",
        "marts: skipped (a stage it depends on did not produce its input)",
    ]
    assert progress.finished[-1].skipped and not progress.finished[-1].failed
