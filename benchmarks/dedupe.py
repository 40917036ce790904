"""Dedupe on the embedded local stack (issue 19, "fetch each distinct image once"): a job of
``--lines`` manifest lines over ``--urls`` distinct images makes one request and one inference per
distinct URL, and every line still gets its result.

The workload: ``--urls`` different JPEGs (the sample photos at different sizes, so every image's
bytes differ and only URL dedupe can save work), served on loopback by a server that counts the
requests for each path. The manifest holds every URL once, then draws among them up to ``--lines``
(seeded, shuffled), each line in one of three spellings of one key (``http``, ``HTTP``, a
``#fragment``: urlkey.py).

A leg starts the local stack as ``batchpredict local run`` does (moto server, DynamoDB Local,
worker processes from the SAM template), with ``--workers`` predict workers and no scale-out beyond
them, submits the manifest, waits for the job's end and checks every line (``check``): its own
URL, SUCCEEDED, and the predictions and image of the line it names in ``shared_with``, or of the
first line of its URL. It prints lines, distinct URLs, the requests the image server counted, the
inferences (lines whose result carries a forward-pass share of its own, ``timing_ms.inference >
0``: a line that took another's outcome, by URL or by bytes, or copied a row, has none), the
lines naming ``shared_with``, the fetches beyond one per URL (lines without ``shared_with``
less distinct URLs), and the wall time.

With one worker the chunks run in order, so every duplicate finds its original in the same
invocation or written before it: requests = inferences = distinct URLs. With more, a duplicate
whose original is still running in another worker is fetched for itself
(sharing.when_original_missing: PREDICT) and checked against the first line of its URL: the
surplus is printed.

Usage::

    python benchmarks/dedupe.py [--lines 1000] [--urls 100] [--workers 1 2] [--repeat 1]
        [--model build/model/efficientnet-lite0] [--samples build/samples]
"""

from __future__ import annotations

import argparse
import http.server
import os
import random
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SPELLINGS = ("http://{host}/p{k}.jpg", "HTTP://{host}/p{k}.jpg", "http://{host}/p{k}.jpg#line-{i}")


def distinct_photos(samples: Path, folder: Path, count: int) -> None:
    """``count`` JPEGs p0.jpg … in ``folder``, all different: the sample photos at growing sizes."""
    from PIL import Image

    photos = sorted(p for p in samples.iterdir() if p.suffix in (".png", ".jpg"))
    for k in range(count):
        with Image.open(photos[k % len(photos)]) as photo:
            photo.convert("RGB").resize((160 + k, 120 + k)).save(folder / f"p{k}.jpg", quality=85)


def dedupe_manifest(base_url: str, lines: int, urls: int, seed: int = 19) -> list[str]:
    """Every URL once, then draws among them up to ``lines``, shuffled; each line in one of three
    spellings of its URL's key."""
    rng = random.Random(seed)
    picks = list(range(urls)) + [rng.randrange(urls) for _ in range(lines - urls)]
    rng.shuffle(picks)
    host = base_url.removeprefix("http://")
    return [rng.choice(SPELLINGS).format(host=host, k=k, i=i) for i, k in enumerate(picks)]


class CountingImageServer:
    """A folder over HTTP on 127.0.0.1 (a thread of this process) counting requests per path."""

    def __init__(self, root: Path) -> None:
        from batchpredict.local.servers import LoopbackHTTPServer

        self.requests: Counter[str] = Counter()
        lock, requests = threading.Lock(), self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self) -> None:
                with lock:
                    requests[self.path] += 1
                super().do_GET()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = LoopbackHTTPServer(Handler, name="counting-image-server")
        self.url = self._server.url

    def start(self) -> str:
        return self._server.start()

    def stop(self) -> None:
        self._server.stop()


@dataclass(frozen=True)
class Tally:
    lines: int
    distinct: int
    shared: int  # lines naming shared_with
    refetched: int  # fetches beyond one per URL: lines fetched for themselves, less distinct URLs
    own_inference: int  # lines with a forward-pass share of their own
    wrong: list[str]  # what does not hold, line by line


# Two forward passes of one image in different batches differ by up to ~6e-7 (README, TAIL_PASS).
PROBABILITY_TOLERANCE = 1e-5


def check(urls: Sequence[str], results: Sequence[dict[str, Any]]) -> Tally:
    """Every manifest line has its result, in order, with its own URL, SUCCEEDED. A line naming
    ``shared_with`` has that line's predictions and image exactly, and that line has the same
    URL key and was fetched for itself; a line fetched for itself after the first of its key
    (its original was running elsewhere) has the first's classes and image, its probabilities
    within PROBABILITY_TOLERANCE (``results``: result lines as JSON objects)."""
    from batchpredict.urlkey import url_key

    wrong = [] if len(results) == len(urls) else [f"{len(results)} results for {len(urls)} lines"]
    first: dict[str, int] = {}
    for position, line in enumerate(results):
        index, shared = line["index"], line.get("shared_with")
        key = url_key(line["url"])
        original = first.setdefault(key, index)
        problems = [
            index != position and "out of order",
            line["url"] != urls[index] and "another URL",
            line["status"] != "SUCCEEDED" and f"{line['status']} {line['error']}",
        ]
        if shared is not None:
            leader = results[shared] if 0 <= shared < len(results) else {}
            problems += [
                (url_key(leader.get("url", "")) != key or leader.get("shared_with") is not None)
                and f"shared_with {shared}, not a line of its URL fetched for itself",
                leader.get("predictions") != line["predictions"] and "predictions differ from shared_with's",
                leader.get("image") != line["image"] and "image differs from shared_with's",
            ]
        elif original != index:
            problems.append(not _same(line, results[original]) and "predictions differ from the first's")
        wrong += [f"line {index}: {problem}" for problem in problems if problem]
    return Tally(
        lines=len(results),
        distinct=len(first),
        shared=sum(1 for line in results if line.get("shared_with") is not None),
        # The first line of a URL may itself take a later line's fetch (chunks out of order).
        refetched=sum(1 for line in results if line.get("shared_with") is None) - len(first),
        own_inference=sum(1 for line in results if line["timing_ms"]["inference"] > 0),
        wrong=wrong,
    )


def _same(line: dict[str, Any], first: dict[str, Any]) -> bool:
    """The same image and classes, in order, and probabilities within PROBABILITY_TOLERANCE."""
    ours, theirs = line["predictions"], first["predictions"]
    return (
        line["image"] == first["image"]
        and [p["class_index"] for p in ours] == [p["class_index"] for p in theirs]
        and all(
            abs(a["probability"] - b["probability"]) <= PROBABILITY_TOLERANCE
            for a, b in zip(ours, theirs, strict=True)
        )
    )


def leg(args: argparse.Namespace, workers: int, server: CountingImageServer, manifest: Path) -> str:
    """One job on a fresh local stack; its line of the report."""
    from batchpredict.cli.client import Client
    from batchpredict.jobs import FINAL_STATUSES
    from batchpredict.local.provision import LocalOptions
    from batchpredict.local.stack import LocalStack

    options = LocalOptions(
        model_uri=str(args.model.resolve()),
        prefix=f"dd{uuid.uuid4().hex[:8]}",
        allowed_networks=server.url.removeprefix("http://"),
        predict_workers=workers,
        max_predict_workers=workers,
    )
    server.requests.clear()
    with tempfile.TemporaryDirectory() as logs:
        stack = LocalStack(
            options, serve_api=False, log_dir=Path(logs), warn=lambda m: print(m, file=sys.stderr)
        )
        ref = stack.start()
        try:
            client = Client(ref)
            started = time.monotonic()
            job_id = client.submit(manifest)
            job = client.wait_for_job(job_id, timeout=args.timeout)
            while job.status not in FINAL_STATUSES and time.monotonic() - started < args.timeout:
                time.sleep(0.5)
                job = client.job(job_id)
            wall = time.monotonic() - started
            if job.status not in FINAL_STATUSES:
                raise SystemExit(f"job {job_id} not done in {args.timeout:.0f}s: {job.status}")
            results = [record.to_json() for record in client.result_lines(job_id)]
        finally:
            stack.stop()
    tally = check(manifest.read_text().splitlines(), results)
    for problem in tally.wrong[:20]:
        print(f"  wrong: {problem}", file=sys.stderr)
    requests, most = sum(server.requests.values()), max(server.requests.values(), default=0)
    return (
        f"{tally.lines} lines, {tally.distinct} distinct URLs: {requests} requests "
        f"({most} at most for one URL), {tally.own_inference} inferences, "
        f"{tally.shared} lines sharing another's fetch, {tally.refetched} fetched again, "
        f"{len(tally.wrong)} wrong; {job.status.value} "
        f"({job.succeeded}/{job.total} succeeded) in {wall:.1f} s"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=1000)
    parser.add_argument("--urls", type=int, default=100)
    parser.add_argument("--workers", type=int, nargs="+", default=[1])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--model", type=Path, default=ROOT / "build" / "model" / "efficientnet-lite0")
    parser.add_argument("--samples", type=Path, default=ROOT / "build" / "samples")
    args = parser.parse_args(argv)
    if not 0 < args.urls <= args.lines:
        parser.error("need 0 < --urls <= --lines")
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?")
    print(f"CPU: {cpu}, {os.cpu_count()} logical CPUs; load average {os.getloadavg()[0]:.2f} at start")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "www").mkdir()
        distinct_photos(args.samples, root / "www", args.urls)
        server = CountingImageServer(root / "www")
        server.start()
        manifest = root / "dedupe.txt"
        manifest.write_text("\n".join(dedupe_manifest(server.url, args.lines, args.urls)) + "\n")
        try:
            for run in range(1, args.repeat + 1):
                for workers in args.workers:
                    line = leg(args, workers, server, manifest)
                    print(f"{workers} workers run {run}: {line}; load {os.getloadavg()[0]:.2f}", flush=True)
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
