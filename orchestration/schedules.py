"""The daily safety net: the loop runs once a day even if no signal arrived."""

import dagster as dg

from orchestration.jobs import loop_job
from orchestration.resources import run_config_for


@dg.schedule(
    job=loop_job,
    cron_schedule="0 6 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def daily_loop_schedule(context: dg.ScheduleEvaluationContext):
    """06:00 UTC every day, acting as of the scheduled time."""
    scheduled = context.scheduled_execution_time
    as_of = scheduled.replace(tzinfo=None) if scheduled.tzinfo is None else scheduled.astimezone(tz=None)
    return dg.RunRequest(run_config=run_config_for(as_of=as_of.replace(tzinfo=None)))
