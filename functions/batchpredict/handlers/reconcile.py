"""reconcile: the work queue's dead-letter queue -> FAILED ``dead_lettered`` results, counted."""

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
from batchpredict.finalize import reconcile_dead_letter
from batchpredict.messages import Chunk
from batchpredict.observability import MetricUnit, logger, metrics, tracer
from batchpredict.writer import ChunkWriter

processor = BatchProcessor(event_type=EventType.SQS)


@cache
def writer() -> ChunkWriter:
    config = finalize_config(os.environ)
    return wiring.chunk_writer(config.tables, config.output_bucket, config.finalize_queue_url)


def record_handler(record: SQSRecord) -> None:
    chunk = Chunk.parse(record.body)
    logger.append_keys(job_id=chunk.job_id)
    receive_count = int(record.attributes.approximate_receive_count or 0) or None
    if reconcile_dead_letter(chunk, writer(), receive_count):
        logger.warning("dead-lettered chunk written as failed", extra={"chunk": chunk.chunk})
        metrics.add_metric(name="ChunksDeadLettered", unit=MetricUnit.Count, value=1)


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    return process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
