"""predict: work queue (a batch of chunk messages) -> the streaming predictor -> parts, rows, counters."""

from __future__ import annotations

import os
from functools import cache
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from batchpredict import wiring
from batchpredict.batch import ChunkBatch, event_messages, publish_metrics
from batchpredict.config import predict_config
from batchpredict.observability import logger, metrics, tracer

processor = BatchProcessor(event_type=EventType.SQS)


@cache
def service() -> ChunkBatch:
    """Cold start: settings, the model (loaded and bound once per process), clients, pools."""
    return wiring.chunk_batch(predict_config(os.environ))


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    outcomes = service().run(event_messages(event), lambda: context.get_remaining_time_in_millis() / 1000)
    publish_metrics(outcomes)

    def report(record: SQSRecord) -> None:
        outcomes[record.message_id].raise_for_failure()  # -> batchItemFailures: redelivered

    return process_partial_response(event=event, record_handler=report, processor=processor, context=context)
