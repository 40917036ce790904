"""Images/s of the batch pipeline on the local stack (moto server + loopback image server).

Runs one job of N image lines (the sample photos under many URLs) through split ->
predict -> finalize with the synchronous driver, and prints where the time went:
wall time end to end, time inside the predict handler, and the bare engine on the same
images for comparison.

Usage: python benchmarks/pipeline_throughput.py --model build/model/efficientnet-lite0 \
           --samples build/samples [--images 200] [--chunk-size 16]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

_SPENT_LOCK = threading.Lock()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--samples", type=Path, required=True)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--chunk-size", type=int, default=16)
    parser.add_argument("--max-batch", type=int, default=32)
    args = parser.parse_args()

    from batchpredict.local.servers import FileServer, MotoServer

    moto = MotoServer()
    endpoint = moto.start()
    files = FileServer(args.samples)
    base_url = files.start()
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
        }
    )
    try:
        run(args, base_url)
    finally:
        files.stop()
        moto.stop()


def run(args: argparse.Namespace, base_url: str) -> None:
    import boto3

    from batchpredict.local.provision import LocalOptions, provision_from_template
    from batchpredict.local.stack import LOCAL_QUIET, Stack

    s3, sqs, dynamodb = boto3.client("s3"), boto3.client("sqs"), boto3.client("dynamodb")
    options = LocalOptions(
        model_uri=str(args.model.resolve()),
        prefix="bench",
        allowed_networks="127.0.0.1",  # the benchmark's image server
        parameters={"ChunkSize": str(args.chunk_size)},
        environment={"MAX_BATCH": str(args.max_batch)} | LOCAL_QUIET,
    )
    stack = Stack(s3, sqs, dynamodb, provision_from_template(s3, sqs, dynamodb, options))
    os.environ.update(stack.environment())
    photos = sorted(p.name for p in args.samples.iterdir() if p.suffix in {".png", ".jpg"})
    # Distinct URLs (a query string) so nothing can be cached along the way.
    lines = [f"{base_url}/{photos[i % len(photos)]}?n={i}" for i in range(args.images)]

    spent: dict[str, float] = defaultdict(float)
    timed = stack.mappings(wrap=lambda name, handler: _timed(handler, spent, name))
    # Inside predict: the stream (fetch + decode + inference) against the writes (ChunkWriter), which
    # overlap the stream in writer threads: their times add up to more than the handler's.
    from batchpredict.pipeline import StreamingPredictor
    from batchpredict.writer import ChunkWriter

    stream, write = StreamingPredictor.run, ChunkWriter.write
    StreamingPredictor.run = _timed_method(stream, spent, "predict: stream fetch+decode+infer")  # type: ignore[method-assign]
    ChunkWriter.write = _timed_method(write, spent, "predict: write part+rows+count")  # type: ignore[method-assign]
    # Cold start (settings, clients, model load and bind) is paid once, before the clock starts.
    from batchpredict.handlers import predict

    cold = time.perf_counter()
    predict.service()
    cold_s = time.perf_counter() - cold

    started = time.perf_counter()
    stack.submit("bench.txt", "\n".join(lines))
    stack.drain(timed, max_seconds=1800, idle=lambda: time.sleep(0.05))
    wall = time.perf_counter() - started
    (job,) = stack.jobs().all_jobs()
    assert job.total == args.images and job.succeeded == args.images, job

    engine_ips = _bare_engine(args, photos)
    n = args.images
    print(f"job of {n} images, chunk size {args.chunk_size}, max batch {args.max_batch}, status {job.status}")
    print(f"  cold start (model load + bind, once)   {cold_s:8.2f} s")
    print(f"  end to end (submit -> COMPLETED)       {wall:8.2f} s   {n / wall:7.1f} images/s")
    for name, seconds in spent.items():
        print(f"  in {name:<36} {seconds:8.2f} s   {n / seconds if seconds else 0:7.1f} images/s")
    label = f"bare engine, batch {args.max_batch} (inference only)"
    print(f"  {label:<39} {n / engine_ips:8.2f} s   {engine_ips:7.1f} images/s")
    print(f"  predict handler / bare engine: {n / spent['PredictFunction'] / engine_ips:.2f}x")


def _timed(handler: Any, spent: dict[str, float], name: str) -> Any:
    def wrapped(event: Any, context: Any) -> Any:
        started = time.perf_counter()
        try:
            return handler(event, context)
        finally:
            spent[name] += time.perf_counter() - started

    return wrapped


def _timed_method(method: Any, spent: dict[str, float], name: str) -> Any:
    def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        finally:
            with _SPENT_LOCK:  # writes run in threads
                spent[name] += time.perf_counter() - started

    return wrapped


def _bare_engine(args: argparse.Namespace, photos: list[str]) -> float:
    from batchpredict.handlers import predict
    from batchpredict.images import decode_image

    engine = predict.service().predictor.engine
    tensors = [decode_image((args.samples / p).read_bytes(), engine.spec.preprocess).tensor for p in photos]
    batch = np.stack([tensors[i % len(tensors)] for i in range(args.max_batch)])
    engine.probabilities(batch)
    rounds = max(1, args.images // args.max_batch)
    started = time.perf_counter()
    for _ in range(rounds):
        engine.probabilities(batch)
    return float(rounds * args.max_batch / (time.perf_counter() - started))


if __name__ == "__main__":
    with tempfile.TemporaryDirectory():
        main()
