"""split_manifest: manifest queue (S3 ObjectCreated events) -> JOB record + chunk messages."""

from __future__ import annotations

import os
from functools import cache

from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from batchpredict import wiring
from batchpredict.config import split_config
from batchpredict.handlers.sqs import sqs_batch_handler
from batchpredict.observability import MetricUnit, metrics
from batchpredict.split import Splitter


@cache
def splitter() -> Splitter:
    """Built once per process (cold start); a missing setting fails here, naming it."""
    config = split_config(os.environ)
    return Splitter(
        jobs=wiring.job_store(config.tables),
        s3=wiring.s3_client(),
        work=wiring.queue(config.work_queue_url),
        manifests=wiring.queue(config.manifest_queue_url),
        finalize=wiring.queue(config.finalize_queue_url),
        settings=config.settings,
        results=wiring.result_store(config.output_bucket),
        events=wiring.job_events(config.event_bus),
    )


def record_handler(record: SQSRecord, lambda_context: LambdaContext) -> None:
    for outcome in splitter().handle(
        record.message_id, record.body, lambda_context.get_remaining_time_in_millis
    ):
        metrics.add_metric(name=f"Manifest_{outcome.action}", unit=MetricUnit.Count, value=1)
        metrics.add_metric(name="ManifestLinesSplit", unit=MetricUnit.Count, value=outcome.items)


lambda_handler = sqs_batch_handler(record_handler, cold_start=splitter)
