"""reconcile: the dead-letter queues' consumer.

* manifest queue's: a job whose split failed every delivery -> FAILED, naming the manifest;
* work queue's: a dead-lettered chunk -> FAILED ``dead_lettered`` results, counted;
* finalize queue's: a job whose merge failed every delivery -> FAILED, with the reason.
"""

from __future__ import annotations

import os
from functools import cache

from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from batchpredict import wiring
from batchpredict.config import FinalizeConfig, finalize_config
from batchpredict.finalize import Finalizer, reconcile_dead_letter
from batchpredict.handlers.sqs import sqs_batch_handler
from batchpredict.messages import ManifestMessage, parse_dead_letter
from batchpredict.observability import MetricUnit, logger, metrics
from batchpredict.writer import ChunkWriter


@cache
def config() -> FinalizeConfig:
    return finalize_config(os.environ)


@cache
def writer() -> ChunkWriter:
    c = config()
    return wiring.chunk_writer(c.tables, c.output_bucket, c.finalize_queue_url)


@cache
def finalizer() -> Finalizer:
    return wiring.finalizer(config())


def cold_start() -> None:
    writer()
    finalizer()


def record_handler(record: SQSRecord, lambda_context: LambdaContext) -> None:
    message = parse_dead_letter(record.body)
    receive_count = int(record.attributes.approximate_receive_count or 0) or None
    if isinstance(message, ManifestMessage):
        logger.warning(
            "dead-lettered manifest message: its jobs fail", extra={"receive_count": receive_count}
        )
        jobs = finalizer().split_dead_lettered(message, record.message_id, receive_count)
        metrics.add_metric(name="ManifestsDeadLettered", unit=MetricUnit.Count, value=1)
        logger.info(
            "jobs of the dead-lettered manifest", extra={"jobs": {j.job_id: j.status for j in jobs if j}}
        )
        return
    if isinstance(message, str):
        logger.append_keys(job_id=message)
        logger.warning("dead-lettered finalize: the job fails", extra={"receive_count": receive_count})
        finalizer().dead_lettered(message, receive_count)
        metrics.add_metric(name="FinalizeDeadLettered", unit=MetricUnit.Count, value=1)
        return
    logger.append_keys(job_id=message.job_id)
    lease = lambda_context.get_remaining_time_in_millis() / 1000 + 5.0  # the claim outlives this call by 5 s
    if reconcile_dead_letter(message, writer(), receive_count, lease):
        logger.warning("dead-lettered chunk written as failed", extra={"chunk": message.chunk})
        metrics.add_metric(name="ChunksDeadLettered", unit=MetricUnit.Count, value=1)


lambda_handler = sqs_batch_handler(record_handler, cold_start=cold_start)
