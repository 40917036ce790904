"""finalize: finalize queue -> results.jsonl, _summary.json, final job status."""

from __future__ import annotations

import os
from functools import cache

from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from batchpredict import wiring
from batchpredict.config import DEFAULT_HEARTBEAT_SECONDS, finalize_config
from batchpredict.finalize import Finalizer
from batchpredict.handlers.sqs import sqs_batch_handler
from batchpredict.messages import parse_finalize
from batchpredict.observability import logger
from batchpredict.queues import Heartbeat


@cache
def finalizer() -> Finalizer:
    return wiring.finalizer(finalize_config(os.environ))


def record_handler(record: SQSRecord, lambda_context: LambdaContext) -> None:
    job_id = parse_finalize(record.body)
    logger.append_keys(job_id=job_id)
    service = finalizer()

    def remaining() -> float:
        return lambda_context.get_remaining_time_in_millis() / 1000

    # While it merges, its message stays hidden a heartbeat's step at a time: if it dies, the
    # merge resumes from its checkpoint within the step, not the queue's visibility timeout. If
    # it fails, the message waits the queue's visibility timeout, as without a heartbeat.
    heartbeat = Heartbeat(service.finalize_queue, DEFAULT_HEARTBEAT_SECONDS, remaining)
    heartbeat.keep({record.message_id: record.receipt_handle})
    try:
        service.finalize(job_id, remaining)
    except Exception:
        heartbeat.stop()
        heartbeat.retry_later()
        raise
    finally:
        heartbeat.stop()


lambda_handler = sqs_batch_handler(record_handler, cold_start=finalizer)
