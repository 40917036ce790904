"""Cold start of the predict handler, as a new process sees it: process start -> first prediction.

Each run starts a fresh interpreter (as Lambda starts a container) that imports the predict
handler, builds its service (settings, clients), then its predictor (model load and bind, pools:
ChunkBatch does so in its first run, so a worker that dies loading frees its messages) and
predicts one sample photo through the production stream (fetch over loopback, decode, forward).
The parent timestamps the spawn; the child reports wall-clock milestones and its own CPU time at
each (all threads), which a loaded machine inflates far less than the wall clock.

Usage: python benchmarks/cold_start.py --model build/model/efficientnet-lite0 \
           --samples build/samples [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CHILD = """
import json, os, sys, time
def mark():
    return time.time(), time.process_time()
marks = {"interpreter": mark()}
from batchpredict.handlers import predict
marks["imports"] = mark()
svc = predict.service()
marks["service (settings, clients)"] = mark()
predictor = svc.predictor  # ChunkBatch builds it in its first run, under the heartbeat
marks["model load + bind (the first run's)"] = mark()
from batchpredict.batch import predict_urls
records = predict_urls(predictor, [sys.argv[1]], time.monotonic() + 60)
assert records[0].status == "SUCCEEDED", records[0]
marks["first prediction"] = mark()
print(json.dumps(marks))
"""


def one_run(url: str, env: dict[str, str]) -> dict[str, tuple[float, float]]:
    """Each step's (wall s, process CPU s); the interpreter's CPU counts from the process's start."""
    spawned = time.time()
    out = subprocess.run(
        [sys.executable, "-c", CHILD, url], env=env, capture_output=True, text=True, check=True
    ).stdout
    marks: dict[str, list[float]] = json.loads(out.strip().splitlines()[-1])
    steps, previous, previous_cpu = {}, spawned, 0.0
    for name, (at, cpu) in marks.items():
        steps[name] = (at - previous, cpu - previous_cpu)
        previous, previous_cpu = at, cpu
    steps["total: process start -> first prediction"] = (previous - spawned, previous_cpu)
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--samples", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    from batchpredict.local.servers import FileServer

    files = FileServer(args.samples)
    base = files.start()
    env = os.environ | {
        "MODEL_URI": str(args.model.resolve()),
        "TABLE_NAME": "cold-start",
        "OUTPUT_BUCKET": "cold-start",
        "FINALIZE_QUEUE_URL": "http://127.0.0.1:1/finalize",
        "ALLOWED_NETWORKS": "127.0.0.1/32",
        "AWS_DEFAULT_REGION": "us-east-1",
        "INFERENCE_THREADS": "1",
        "POWERTOOLS_METRICS_NAMESPACE": "batchpredict",
    }
    try:
        load = os.getloadavg()
        runs = [one_run(f"{base}/china.jpg", env) for _ in range(args.runs)]
    finally:
        files.stop()
    after = os.getloadavg()[0]
    print(f"predict cold start, {args.runs} fresh processes, load average {load[0]:.2f} -> {after:.2f}")
    print(f"  {'':<50} {'wall s: median, range':>24}   {'CPU s: median, range':>22}")
    for name in runs[0]:
        cells = []
        for column in (0, 1):
            values = [r[name][column] for r in runs]
            median = statistics.median(values)
            cells.append(f"{median:5.2f}  {min(values):.2f}-{max(values):.2f}")
        print(f"  {name:<50} {cells[0]:>24}   {cells[1]:>22}")


if __name__ == "__main__":
    main()
