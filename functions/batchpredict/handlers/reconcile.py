"""reconcile: the work queue's dead-letter queue -> FAILED ``dead_lettered`` results, counted."""

from __future__ import annotations

import os
from functools import cache

from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from batchpredict import wiring
from batchpredict.config import finalize_config
from batchpredict.finalize import reconcile_dead_letter
from batchpredict.handlers.sqs import sqs_batch_handler
from batchpredict.messages import Chunk
from batchpredict.observability import MetricUnit, logger, metrics
from batchpredict.writer import ChunkWriter


@cache
def writer() -> ChunkWriter:
    config = finalize_config(os.environ)
    return wiring.chunk_writer(config.tables, config.output_bucket, config.finalize_queue_url)


def record_handler(record: SQSRecord, lambda_context: LambdaContext) -> None:
    chunk = Chunk.parse(record.body)
    logger.append_keys(job_id=chunk.job_id)
    receive_count = int(record.attributes.approximate_receive_count or 0) or None
    lease = lambda_context.get_remaining_time_in_millis() / 1000 + 5.0  # the claim outlives this call by 5 s
    if reconcile_dead_letter(chunk, writer(), receive_count, lease):
        logger.warning("dead-lettered chunk written as failed", extra={"chunk": chunk.chunk})
        metrics.add_metric(name="ChunksDeadLettered", unit=MetricUnit.Count, value=1)


lambda_handler = sqs_batch_handler(record_handler, cold_start=writer)
