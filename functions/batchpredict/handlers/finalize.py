"""finalize: finalize queue -> results.jsonl, _summary.json, final job status."""

from __future__ import annotations

import os
from functools import cache
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from batchpredict import wiring
from batchpredict.config import finalize_config
from batchpredict.finalize import Finalizer
from batchpredict.messages import parse_finalize
from batchpredict.observability import MetricUnit, logger, metrics, tracer

processor = BatchProcessor(event_type=EventType.SQS)


@cache
def finalizer() -> Finalizer:
    config = finalize_config(os.environ)
    return Finalizer(wiring.job_store(config.tables), wiring.result_store(config.output_bucket))


def record_handler(record: SQSRecord) -> None:
    job_id = parse_finalize(record.body)
    logger.append_keys(job_id=job_id)
    job = finalizer().finalize(job_id)
    if job is not None and job.completed_at:
        metrics.add_metric(name="JobsFinalized", unit=MetricUnit.Count, value=1)


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    return process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
