"""predict: work queue (a batch of chunk messages) -> one forward pass -> parts, rows, counters."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from batchpredict import wiring
from batchpredict.batch import ChunkPredictor, ImageFetcher
from batchpredict.config import predict_config
from batchpredict.messages import Chunk
from batchpredict.observability import MetricUnit, logger, metrics, tracer
from batchpredict.records import SUCCEEDED
from batchpredict.writer import ChunkWriter

processor = BatchProcessor(event_type=EventType.SQS)
LEASE_MARGIN_SECONDS = 5.0


@dataclass(frozen=True)
class Service:
    predictor: ChunkPredictor
    writer: ChunkWriter


@cache
def service() -> Service:
    """Cold start: settings, the model (loaded and bound once per process), clients."""
    config = predict_config(os.environ)
    images = ImageFetcher(wiring.fetcher(config.fetch), config.policy)
    predictor = ChunkPredictor(
        wiring.engine(config.engine), images, config.engine.top_k, config.max_image_pixels
    )
    return Service(
        predictor, wiring.chunk_writer(config.tables, config.output_bucket, config.finalize_queue_url)
    )


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    svc = service()
    chunks: dict[str, Chunk] = {}
    for raw in event.get("Records", []):
        try:
            chunks[raw["messageId"]] = Chunk.parse(raw["body"])
        except (KeyError, ValueError, TypeError):
            logger.exception("malformed chunk message", extra={"message_id": raw.get("messageId")})
    # One batched inference for every image of every chunk in this invocation.
    ordered = list(chunks.values())
    records = dict(zip(chunks, svc.predictor.records(ordered), strict=True)) if ordered else {}

    def write(record: SQSRecord) -> None:
        if record.message_id not in chunks:
            raise ValueError(f"message {record.message_id} is not a chunk message")  # -> DLQ -> reconcile
        chunk, rows = chunks[record.message_id], records[record.message_id]
        logger.append_keys(job_id=chunk.job_id)
        # The claim on the chunk lasts as long as this invocation can (plus a margin).
        lease = context.get_remaining_time_in_millis() / 1000 + LEASE_MARGIN_SECONDS
        if not svc.writer.write(chunk, rows, svc.predictor.engine.model_id, lease):
            metrics.add_metric(name="ChunksRedelivered", unit=MetricUnit.Count, value=1)
            return  # counted by an earlier delivery: its images are in the metrics already
        succeeded = sum(1 for r in rows if r["status"] == SUCCEEDED)
        metrics.add_metric(name="ImagesSucceeded", unit=MetricUnit.Count, value=succeeded)
        metrics.add_metric(name="ImagesFailed", unit=MetricUnit.Count, value=len(rows) - succeeded)

    return process_partial_response(event=event, record_handler=write, processor=processor, context=context)
