"""SQS call latency against queue depth on the local stack's moto server (issue 9).

Fills a standard queue to each depth with chunk-sized messages (SendMessageBatch of 10), then
times, at that depth: ReceiveMessage of 10 (visibility 300 s, so the in-flight messages pile
up at the head of the queue as they do under the runner), DeleteMessageBatch of what it got,
SendMessageBatch of 10 and GetQueueAttributes. Prints the median of each and its ratio to the
smallest depth. ``--moto-original`` runs moto's own SQS code instead (no ``sqs_depth`` patch);
keep its depths small, its receive grows with the square of the depth.

    python benchmarks/sqs_depth.py                      # depths 1,000 and 40,000
    python benchmarks/sqs_depth.py --moto-original --depths 1000 4000 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import boto3

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import MessageTypeDef, SendMessageBatchRequestEntryTypeDef

BODY = "x" * 2000  # about a chunk message of 16 lines


def _median_ms(call: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def measure(sqs: SQSClient, depth: int, repeats: int) -> dict[str, float]:
    url = sqs.create_queue(
        QueueName=f"depth-{uuid.uuid4().hex[:8]}", Attributes={"VisibilityTimeout": "300"}
    )["QueueUrl"]
    entries: list[SendMessageBatchRequestEntryTypeDef] = [
        {"Id": str(i), "MessageBody": BODY} for i in range(10)
    ]
    started = time.perf_counter()
    for _ in range(depth // 10):
        sqs.send_message_batch(QueueUrl=url, Entries=entries)
    fill_s = time.perf_counter() - started
    received: list[MessageTypeDef] = []

    def receive() -> None:
        received[:] = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
        assert len(received) == 10

    def delete() -> None:
        receive()
        sqs.delete_message_batch(
            QueueUrl=url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(received)],
        )

    figures = {
        "receive 10": _median_ms(receive, repeats),
        "receive + delete 10": _median_ms(delete, repeats),
        "send batch of 10": _median_ms(
            lambda: sqs.send_message_batch(QueueUrl=url, Entries=entries), repeats
        ),
        "queue attributes": _median_ms(
            lambda: sqs.get_queue_attributes(
                QueueUrl=url,
                AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
            ),
            repeats,
        ),
    }
    print(f"  depth {depth:>7,}: filled in {fill_s:6.1f} s ({depth / fill_s:,.0f} messages/s)", flush=True)
    sqs.delete_queue(QueueUrl=url)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--depths", type=int, nargs="+", default=[1000, 40000])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--moto-original", action="store_true", help="moto's own SQS, without the patch")
    args = parser.parse_args()

    if args.moto_original:
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)

        server: Any = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
    else:
        from batchpredict.local.servers import MotoServer

        server = MotoServer()
        endpoint = server.start()
    sqs = boto3.client(
        "sqs",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )
    print(
        f"moto SQS ({'original' if args.moto_original else 'with local.sqs_depth'}); load {os.getloadavg()}"
    )
    results = {depth: measure(sqs, depth, args.repeats) for depth in args.depths}
    server.stop()
    base = results[args.depths[0]]
    print(f"\nmedian of {args.repeats} calls, ms (ratio to depth {args.depths[0]:,})")
    print(f"{'depth':>8}  " + "  ".join(f"{name:>24}" for name in base))
    for depth, figures in results.items():
        cells = (f"{ms:9.2f} ms ({ms / base[name]:5.2f}x)" for name, ms in figures.items())
        print(f"{depth:>8,}  " + "  ".join(f"{cell:>24}" for cell in cells))
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
