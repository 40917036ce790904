"""sweep: a schedule (EventBridge, every minute; locally every few seconds) -> sweep.Sweeper:
every open job past its deadline ends, FAILED ``timed_out`` (CANCELLED: a user's cancel)."""

from __future__ import annotations

import os
from functools import cache
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from batchpredict import wiring
from batchpredict.config import sweep_config
from batchpredict.observability import MetricUnit, logger, metrics, tracer
from batchpredict.sweep import Sweeper


@cache
def sweeper() -> Sweeper:
    """Built once per process (cold start); a missing setting fails here, naming it."""
    return wiring.sweeper(sweep_config(os.environ))


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    report = sweeper().sweep(lambda: context.get_remaining_time_in_millis() / 1000)
    metrics.add_metric(name="JobsLookedAt", unit=MetricUnit.Count, value=report.looked_at)
    return {
        "looked_at": report.looked_at,
        "ended": {job.job_id: job.status.value for job in report.ended},
        "lost": report.lost,
        "out_of_time": report.out_of_time,
    }
