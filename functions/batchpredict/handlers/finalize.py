"""finalize: finalize queue -> results.jsonl, _summary.json, final job status."""

from __future__ import annotations

import os
from functools import cache

from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from batchpredict import wiring
from batchpredict.config import finalize_config
from batchpredict.finalize import Finalizer
from batchpredict.handlers.sqs import sqs_batch_handler
from batchpredict.messages import parse_finalize
from batchpredict.observability import logger


@cache
def finalizer() -> Finalizer:
    return wiring.finalizer(finalize_config(os.environ))


def record_handler(record: SQSRecord, lambda_context: LambdaContext) -> None:
    job_id = parse_finalize(record.body)
    logger.append_keys(job_id=job_id)
    finalizer().finalize(job_id, lambda: lambda_context.get_remaining_time_in_millis() / 1000)


lambda_handler = sqs_batch_handler(record_handler, cold_start=finalizer)
