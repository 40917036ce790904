"""Split, counting and finalize of synthetic N-line jobs, against Lambda's limits (issue 9).

No fetch and no inference: a stub predictor writes each chunk's part (records of a realistic
size: five predictions, image, timings) through the real ChunkWriter (part, optional IMG# rows,
the counting transaction). Everything else is the project's own code against a moto server
(S3, SQS, DynamoDB) in its own process, provisioned from the SAM template:

* split: ``Splitter.handle`` invocation after invocation (its continuations read back from the
  manifest queue), each with split_manifest's timeout as its time budget;
* counting: ``--workers`` threads, each one "predict invocation" at a time: receive up to the
  mapping's batch size from the work queue, write every chunk, delete;
* finalize: ``Finalizer.finalize`` per finalize-queue message, with ``--finalize-timeout``
  as each invocation's budget, until the job is final (its continuations come back through
  the finalize queue).

``--feed direct`` skips split and the work queue: the counting stage makes the chunks split would
send (same numbering, same job record through JobStore) and writes them; it is there because
moto's SQS gets slower with queue depth (issue 9: a 1M-line split would take hours on it), not
because our split does. ``--dynamodb`` picks DynamoDB Local (default; moto's DynamoDB copies the
table for every transaction) or moto.

Each stage runs in a fresh process (Lambda's memory is per process): its wall time, its peak
RSS and its invocations are printed beside the function's timeout and memory size. Latency is
added to every S3, SQS and DynamoDB call of the stages (a botocore ``before-send`` hook that
sleeps), e.g. ``--s3-ms 15`` for S3 over a real network.

Usage: python benchmarks/scale.py --lines 10000 100000 1000000 --s3-ms 15 [--sqs-ms 0]
           [--ddb-ms 0] [--rows] [--workers 8] [--finalize-timeout 900] [--stages split,count,finalize]
           [--feed queue|direct] [--dynamodb local|moto] [--part-mib 16]
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import os
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MIB = 1024 * 1024
INPUT_KEY = "manifests/scale.txt"


@dataclass
class StageReport:
    stage: str
    wall_seconds: float = 0.0
    invocations: int = 0
    longest_invocation: float = 0.0
    peak_rss_mb: float = 0.0
    rss_after_invocations_mb: list[float] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)


def _rss_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / MIB


def _peak_rss_mb() -> float:
    """This process's own peak (VmHWM). Not getrusage's ru_maxrss: Linux carries that over exec,
    so a spawned stage would report the parent's RSS at fork when it is larger."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _with_latency(latency_ms: dict[str, float]) -> None:
    """Every client batchpredict creates from now on sleeps ``latency_ms[service]`` before each call."""
    from batchpredict import aws

    make = aws.client

    def client(service: aws.Service, config: Any = None, session: Any = None) -> Any:
        made = make(service, config, session)
        delay = latency_ms.get(service, 0.0) / 1000
        if delay:
            made.meta.events.register(f"before-send.{service}", lambda **_: time.sleep(delay))
        return made

    aws.client = client


def _stub_records(chunk: Any) -> list[Any]:
    from batchpredict.records import ImageInfo, Prediction, ResultRecord, Timing

    labels = ["tabby, tabby cat", "tiger cat", "Egyptian cat", "lynx, catamount", "Persian cat"]
    predictions = tuple(
        Prediction(r + 1, 281 + r, f"n0212{r}045", label, 0.5 / (r + 1)) for r, label in enumerate(labels)
    )
    return [
        ResultRecord.for_item(
            chunk.job_id,
            item,
            model="efficientnet-lite0:1",
            predictions=predictions,
            image=ImageInfo(640, 480, 183_417, "9" * 64, "jpeg"),
            timing=Timing(41.7, 12.3, 10.9),
        )
        for item in chunk.items
    ]


# --- the stages, each in its own process --------------------------------------------------------


def _stage(name: str, env: dict[str, str], latency: dict[str, float], args: dict[str, Any], out: Any) -> None:
    os.environ.update(env)
    _with_latency(latency)
    report = StageReport(name)
    start = time.perf_counter()
    try:
        {"split": _split, "count": _count, "finalize": _finalize}[name](report, args)
    except BaseException:
        out.send(traceback.format_exc())
        raise
    report.wall_seconds = time.perf_counter() - start
    report.peak_rss_mb = _peak_rss_mb()
    out.send(report)


def _budget(seconds: float) -> Callable[[], float]:
    ends = time.perf_counter() + seconds
    return lambda: ends - time.perf_counter()


def _invoke(report: StageReport, call: Callable[[], Any]) -> Any:
    began = time.perf_counter()
    result = call()
    took = time.perf_counter() - began
    report.invocations += 1
    report.longest_invocation = max(report.longest_invocation, took)
    report.rss_after_invocations_mb.append(round(_rss_mb(), 1))
    return result


def _split(report: StageReport, args: dict[str, Any]) -> None:
    """The manifest's S3 event (moto's notification), then the split's own continuations."""
    from batchpredict.handlers import split_manifest

    splitter = split_manifest.splitter()
    manifests = splitter.manifests
    while True:
        got = manifests.client.receive_message(
            QueueUrl=manifests.url, MaxNumberOfMessages=1, WaitTimeSeconds=0 if report.invocations else 5
        )
        if not got.get("Messages"):
            return
        (message,) = got["Messages"]
        left = _budget(args["split_timeout"])
        body, message_id = message["Body"], message["MessageId"]

        def invocation(body: str = body, message_id: str = message_id, left: Any = left) -> Any:
            return splitter.handle(message_id, body, lambda: int(left() * 1000))

        _invoke(report, invocation)
        manifests.client.delete_message(QueueUrl=manifests.url, ReceiptHandle=message["ReceiptHandle"])


def _count(report: StageReport, args: dict[str, Any]) -> None:
    from batchpredict import wiring
    from batchpredict.config import predict_config
    from batchpredict.messages import Chunk

    # The stage plays predict, in predict's environment: its settings are predict's (finalize's
    # would ask for EVENT_BUS_NAME, which predict is not given).
    config = predict_config(os.environ)
    writer = wiring.chunk_writer(config.tables, config.output_bucket, config.finalize_queue_url)
    if not args["rows"]:
        writer.jobs.put_results = lambda records, *a, **k: 0  # type: ignore[method-assign]
    work = wiring.queue(args["work_queue_url"])
    lock = threading.Lock()
    direct = _direct_chunks(writer.jobs, args) if args["feed"] == "direct" else None

    def one_invocation() -> int:
        if direct is not None:  # the chunks split would have sent, without the queue
            with lock:
                chunks = list(itertools.islice(direct, args["batch_size"]))
            for chunk in chunks:
                writer.write(chunk, _stub_records(chunk), "efficientnet-lite0:1", lease_seconds=180)
            return len(chunks)
        got = work.client.receive_message(QueueUrl=work.url, MaxNumberOfMessages=args["batch_size"])
        messages = got.get("Messages", [])
        for message in messages:
            chunk = Chunk.parse(message["Body"])
            writer.write(chunk, _stub_records(chunk), "efficientnet-lite0:1", lease_seconds=180)
            work.client.delete_message(QueueUrl=work.url, ReceiptHandle=message["ReceiptHandle"])
        return len(messages)

    def worker() -> None:
        while True:
            began = time.perf_counter()
            handled = one_invocation()
            if not handled:
                return
            with lock:
                report.invocations += 1
                report.longest_invocation = max(report.longest_invocation, time.perf_counter() - began)

    with ThreadPoolExecutor(args["workers"]) as pool:
        for future in [pool.submit(worker) for _ in range(args["workers"])]:
            future.result()


def _direct_chunks(jobs: Any, args: dict[str, Any]) -> Iterator[Any]:
    """The job record split would write and the chunks it would send (same numbering)."""
    from batchpredict.messages import Chunk
    from batchpredict.records import WorkItem

    lines, size = args["lines"], args["chunk_size"]
    job_id = "job-scale-direct"
    jobs.create(job_id, f"s3://{args['input_bucket']}/{INPUT_KEY}", "direct")
    chunks = -(-lines // size)
    jobs.finish_split(job_id, lines, chunks)
    for k in range(chunks):
        indexes = range(k * size, min(lines, (k + 1) * size))
        yield Chunk(
            job_id, k, [WorkItem(index=i, url=f"https://images.example/{i:07d}.jpg") for i in indexes]
        )


def _finalize(report: StageReport, args: dict[str, Any]) -> None:
    from batchpredict.handlers import finalize

    finalizer = finalize.finalizer()
    queue = finalizer.finalize_queue
    job = None
    merged: list[float] = []  # wall seconds of each invocation that merged
    while True:
        got = queue.client.receive_message(QueueUrl=queue.url, MaxNumberOfMessages=1)
        messages = got.get("Messages", [])
        if not messages:
            break
        (message,) = messages
        job_id = json.loads(message["Body"])["job_id"]
        left = _budget(args["finalize_timeout"])

        def invocation(job_id: str = job_id, left: Callable[[], float] = left) -> Any:
            return finalizer.finalize(job_id, left)

        began = time.perf_counter()
        merging = job is None or job.status.value == "RUNNING"  # else: a duplicate request, a no-op
        job = _invoke(report, invocation)
        if merging:
            merged.append(round(time.perf_counter() - began, 1))
        queue.client.delete_message(QueueUrl=queue.url, ReceiptHandle=message["ReceiptHandle"])
    report.notes["merging invocations (s each)"] = merged
    report.notes["status"] = job.status.value if job else None
    report.notes["results_uri"] = job.results_uri if job else None


def _run_stage(
    name: str, env: dict[str, str], latency: dict[str, float], args: dict[str, Any]
) -> StageReport:
    ctx = mp.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_stage, args=(name, env, latency, args, send))
    process.start()
    report = receive.recv()
    process.join()
    if isinstance(report, str):
        raise RuntimeError(f"stage {name} failed:\n{report}")
    return report  # type: ignore[no-any-return]


# --- one job of N lines ---------------------------------------------------------------------------


def _moto(out: Any) -> None:
    from batchpredict.local.servers import MotoServer

    server = MotoServer()
    out.send(server.start())
    threading.Event().wait()


def run_job(lines: int, latency: dict[str, float], opts: argparse.Namespace) -> None:
    import boto3

    from batchpredict.local.provision import LocalOptions, provision_from_template

    ctx = mp.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    server = ctx.Process(target=_moto, args=(send,), daemon=True)
    server.start()
    endpoint = receive.recv()
    ddb = _dynamodb_local() if opts.dynamodb == "local" else None
    env = {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "POWERTOOLS_LOG_LEVEL": "WARNING",
        "POWERTOOLS_METRICS_NAMESPACE": "batchpredict-scale",
        "POWERTOOLS_TRACE_DISABLED": "true",
    } | ({"AWS_ENDPOINT_URL_DYNAMODB": ddb.endpoint} if ddb else {})
    os.environ.update(env)
    try:
        s3, sqs, dynamodb = boto3.client("s3"), boto3.client("sqs"), boto3.client("dynamodb")
        plan = provision_from_template(
            s3, sqs, dynamodb, LocalOptions(model_uri="unused", prefix="scale", max_function_timeout=None)
        )
        functions = plan.functions
        if opts.feed == "queue":
            manifest = "".join(f"https://images.example/{i:07d}.jpg\n" for i in range(lines)).encode()
            s3.put_object(Bucket=plan.input_bucket, Key=INPUT_KEY, Body=manifest)  # -> the manifest queue
        work = next(m for m in plan.mappings if m.function == "PredictFunction")
        args = {
            "lines": lines,
            "feed": opts.feed,
            "input_bucket": plan.input_bucket,
            "chunk_size": int(functions["SplitManifestFunction"].environment.get("CHUNK_SIZE", "16")),
            "split_timeout": functions["SplitManifestFunction"].timeout,
            "finalize_timeout": opts.finalize_timeout or functions["FinalizeFunction"].timeout,
            "work_queue_url": work.queue_url,
            "batch_size": work.batch_size,
            "workers": opts.workers,
            "rows": opts.rows,
        }
        limits = {
            "split": functions["SplitManifestFunction"],
            "count": functions["PredictFunction"],
            "finalize": functions["FinalizeFunction"],
        }
        engines = f"S3 + SQS: moto server, DynamoDB: {'DynamoDB Local' if ddb else 'moto server'}"
        print(
            f"\nN = {lines:,} lines  (latency per call: {latency} ms; {engines}; feed: {opts.feed})",
            flush=True,
        )
        heads = ("wall s", "invocations", "longest s", "timeout s", "peak MB", "memory MB")
        print(f"  {'stage':9} " + " ".join(f"{h:>11}" for h in heads))
        for stage in opts.stages:
            env_stage = env | limits[stage].environment | {"POWERTOOLS_LOG_LEVEL": "WARNING"}
            if stage == "finalize" and opts.part_mib:
                env_stage["FINALIZE_PART_MIB"] = str(opts.part_mib)
            report = _run_stage(stage, env_stage, latency, args)
            spec = limits[stage]
            timeout = args["finalize_timeout"] if stage == "finalize" else spec.timeout
            cells = (
                f"{report.wall_seconds:.1f}",
                f"{report.invocations:,}",
                f"{report.longest_invocation:.1f}",
                f"{timeout:.0f}",
                f"{report.peak_rss_mb:.0f}",
                f"{spec.memory_mb}",
            )
            print(f"  {stage:9} " + " ".join(f"{c:>11}" for c in cells), flush=True)
            if stage == "finalize":
                rss = report.rss_after_invocations_mb
                more = " ..." if len(rss) > 12 else ""
                print(f"    RSS after each finalize invocation (MB): {rss[:12]}{more}")
                print(f"    {report.notes}")
        _check(s3, plan.output_bucket, lines)
    finally:
        if ddb is not None:
            ddb.stop()
        server.terminate()
        server.join()


def _check(s3: S3Client, bucket: str, lines: int) -> None:
    """The summary agrees with N, and the results files add up to N lines."""
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="results/", Delimiter="/")
    for prefix in listed.get("CommonPrefixes", []):
        key = prefix["Prefix"] + "_summary.json"
        try:
            summary = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        except s3.exceptions.NoSuchKey:
            print("    no _summary.json (finalize not run or not finished)")
            continue
        files = summary.get("results_files", [])
        size = sum(f["bytes"] for f in files)
        print(
            f"    _summary.json: {summary['status']}, total {summary['total']:,} (N {lines:,}), "
            f"{len(files)} results file(s), {size / MIB:.0f} MiB"
        )


def _dynamodb_local() -> Any:
    from batchpredict.local.dynamodb_local import DynamoDBLocal

    ddb = DynamoDBLocal()
    ddb.start()
    return ddb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--s3-ms", type=float, default=15.0)
    parser.add_argument("--sqs-ms", type=float, default=0.0)
    parser.add_argument("--ddb-ms", type=float, default=0.0)
    parser.add_argument("--workers", type=int, default=8, help="concurrent predict invocations (threads)")
    parser.add_argument("--rows", action="store_true", help="also write the IMG# rows (off: parts + counts)")
    parser.add_argument("--finalize-timeout", type=float, default=None, help="s (default: the template's)")
    parser.add_argument("--part-mib", type=int, default=None, help="FINALIZE_PART_MIB (default: the code's)")
    parser.add_argument("--stages", default="split,count,finalize")
    parser.add_argument(
        "--feed",
        choices=["queue", "direct"],
        default="queue",
        help="count from the work queue (after split), or make split's chunks in place (no split, no SQS)",
    )
    parser.add_argument(
        "--dynamodb",
        choices=["local", "moto"],
        default="local",
        help="DynamoDB Local (the real engine) or moto",
    )
    opts = parser.parse_args()
    opts.stages = [s for s in opts.stages.split(",") if not (opts.feed == "direct" and s == "split")]
    latency = {"s3": opts.s3_ms, "sqs": opts.sqs_ms, "dynamodb": opts.ddb_ms}
    print(f"load average before: {os.getloadavg()}, {os.cpu_count()} CPUs")
    for lines in opts.lines:
        run_job(lines, latency, opts)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
