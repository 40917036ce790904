"""Cold start of the predict handler, as a new process sees it: process start -> first prediction.

Each run starts a fresh interpreter (as Lambda starts a container) that imports the predict
handler, builds its service (settings, clients, model load and bind, pools) and predicts one
sample photo through the production stream (fetch over loopback, decode, forward pass).
The parent timestamps the spawn; the child reports wall-clock milestones.

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
marks = {"interpreter": time.time()}
from batchpredict.handlers import predict
marks["imports"] = time.time()
svc = predict.service()
marks["service (settings, clients, model load + bind)"] = time.time()
from batchpredict.batch import predict_urls
records = predict_urls(svc.predictor, [sys.argv[1]], time.monotonic() + 60)
assert records[0]["status"] == "SUCCEEDED", records[0]
marks["first prediction"] = time.time()
print(json.dumps(marks))
"""


def one_run(url: str, env: dict[str, str]) -> dict[str, float]:
    spawned = time.time()
    out = subprocess.run(
        [sys.executable, "-c", CHILD, url], env=env, capture_output=True, text=True, check=True
    ).stdout
    marks: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    steps, previous = {}, spawned
    for name, at in marks.items():
        steps[name] = at - previous
        previous = at
    steps["total: process start -> first prediction"] = previous - spawned
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
    for name in runs[0]:
        values = [r[name] for r in runs]
        low, high = min(values), max(values)
        print(f"  {name:<50} median {statistics.median(values):5.2f} s  range {low:.2f}-{high:.2f}")


if __name__ == "__main__":
    main()
