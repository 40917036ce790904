"""finalize: finalize queue -> results.jsonl, _summary.json, final job status."""

from __future__ import annotations

import os
from functools import cache

from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from batchpredict import wiring
from batchpredict.config import finalize_config
from batchpredict.finalize import Finalizer
from batchpredict.handlers.sqs import sqs_batch_handler
from batchpredict.messages import parse_finalize
from batchpredict.observability import logger


@cache
def finalizer() -> Finalizer:
    config = finalize_config(os.environ)
    return Finalizer(wiring.job_store(config.tables), wiring.result_store(config.output_bucket))


def record_handler(record: SQSRecord) -> None:
    job_id = parse_finalize(record.body)
    logger.append_keys(job_id=job_id)
    finalizer().finalize(job_id)


lambda_handler = sqs_batch_handler(record_handler, cold_start=finalizer)
