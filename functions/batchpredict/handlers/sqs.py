"""The shape every SQS-triggered handler shares: Powertools logging, tracing and metrics
around a BatchProcessor, whose partial failures go back as ``batchItemFailures``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.typing import LambdaContext

from batchpredict.observability import logger, metrics, tracer

LambdaHandler = Callable[[dict[str, Any], LambdaContext], PartialItemFailureResponse]


def sqs_batch_handler(record_handler: Callable[..., Any], cold_start: Callable[[], Any]) -> LambdaHandler:
    """A Lambda entry point that runs ``record_handler`` on each SQS record (it may also take
    ``lambda_context``); records that raise come back, the rest are deleted.

    ``cold_start`` builds the function's settings and collaborators (cached): it runs before
    any record, so a missing setting fails the invocation loudly instead of each message quietly.
    """
    processor = BatchProcessor(event_type=EventType.SQS)

    @logger.inject_lambda_context(clear_state=True)
    @tracer.capture_lambda_handler
    @metrics.log_metrics(capture_cold_start_metric=True)
    def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
        cold_start()
        return process_partial_response(
            event=event, record_handler=record_handler, processor=processor, context=context
        )

    return lambda_handler
