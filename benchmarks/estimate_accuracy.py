"""The dry run against the real job (issue 18, item 6): ``Client.dry_run``'s estimate of a manifest
beside the ``_summary.json`` of the same manifest run on the local stack.

The workload is benchmarks/local_stack_throughput.py's (distinct JPEGs of web sizes on a separate
``http.server`` process, each line its own URL). Each run starts the local stack as ``batchpredict
local run`` does (moto server, DynamoDB Local, predict workers on CPU slots, as many inference
threads each as its memory buys vCPUs) and runs three jobs of ``--images`` lines each, estimated
with the settings the dry run itself uses for the local stack (``local_stack_settings``):

* ``defaults``: the stack has no finished job yet, so the estimate uses the shipped defaults
  (estimate.DEFAULTS);
* ``history``: a second manifest of other lines, estimated from the first job's figures.

For each it prints the estimate's predict GB-s and wall time beside the job's measured ones
(``compute.predict_gb_seconds``; ``duration_seconds``: upload to final status) and their ratios;
then the per-line figures the first jobs measured (their median), the line to put in
estimate.DEFAULTS when the defaults are re-measured.

Usage::

    python benchmarks/estimate_accuracy.py [--images 600] [--repeat 3] [--photos 300]
        [--workers N] [--model build/model/efficientnet-lite0] [--samples build/samples]
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

SCRIPT = Path(__file__).resolve()
LEGS = ("defaults", "history", "history 2")
sys.path.insert(0, str(SCRIPT.parent))
# chaos.py's helpers: local_stack_throughput.py (the workload, the file server) and the CPU's name.
chaos: ModuleType = importlib.import_module("chaos")
sys.path.remove(str(SCRIPT.parent))
throughput, cpu_name = chaos.throughput, chaos.cpu_name


def job(client: Any, manifest: Path, settings: Any, timeout: float) -> dict[str, Any]:
    """The dry run of ``manifest``, then its job to the end: the estimate beside the summary."""
    from batchpredict.jobs import FINAL_STATUSES

    estimate = client.dry_run(manifest, settings=settings)
    job_id = client.submit(manifest)
    started = time.monotonic()
    while (found := client.jobs.get(job_id)) is None or found.status not in FINAL_STATUSES:
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"job {job_id} not final after {timeout:.0f} s")
        time.sleep(0.25)
    client._await_summary(job_id, 0.25)
    summary = client.summary(job_id)
    return {
        "source": estimate.per_line.source,
        "estimate_gb_s": estimate.compute["predict_gb_seconds"],
        "estimate_wall": estimate.wall_seconds,
        "gb_s": summary["compute"]["predict_gb_seconds"],
        "wall": summary["duration_seconds"],
        "status": summary["status"],
        "total": summary["total"],
        "job": found,
    }


def run(args: argparse.Namespace, files_url: str, workload: Any, run_dir: Path) -> dict[str, dict[str, Any]]:
    """One run: a fresh local stack, the defaults job, then the history job."""
    from batchpredict.cli.client import Client, local_stack_settings
    from batchpredict.local.provision import LocalOptions
    from batchpredict.local.stack import LocalStack

    lst = throughput()
    options = LocalOptions(
        model_uri=str(args.model.resolve()),
        prefix="estimate",
        allowed_networks="127.0.0.1",
        predict_workers=args.workers,
    )
    stack = LocalStack(options, log_dir=run_dir / "logs", serve_api=False)
    ref = stack.start()
    try:
        client = Client(ref)
        settings = local_stack_settings()
        legs = {}
        for n, leg in enumerate(LEGS):
            manifest = lst.write_manifest(run_dir / f"{leg}.txt", workload, args.images, files_url, None, 0)
            # Other URLs for the second job: the same photos, nothing cached on the way.
            text = manifest.path.read_text().replace("?n=", f"?job={n}&n=")
            manifest.path.write_text(text)
            legs[leg] = job(client, manifest.path, settings, args.timeout)
    finally:
        stack.stop()
    return legs


def fmt_range(values: Sequence[float], digits: int = 2) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def report(runs: list[dict[str, dict[str, Any]]], args: argparse.Namespace) -> None:
    print(f"\n{args.images} lines a job, {args.workers} predict workers, {len(runs)} run(s)")
    heads = ("estimate GB-s", "job GB-s", "ratio", "estimate wall s", "job wall s", "ratio")
    print(f"  {'leg':9} " + " ".join(f"{h:>16}" for h in heads))
    for leg in LEGS:
        for result in (r[leg] for r in runs):
            cells = (
                f"{result['estimate_gb_s']:.2f}",
                f"{result['gb_s']:.2f}",
                f"{result['estimate_gb_s'] / result['gb_s']:.2f}x",
                f"{result['estimate_wall']:.1f}",
                f"{result['wall']:.1f}",
                f"{result['estimate_wall'] / result['wall']:.2f}x",
            )
            print(f"  {leg:9} " + " ".join(f"{c:>16}" for c in cells) + f"  {result['status']}")
        gb = [r[leg]["estimate_gb_s"] / r[leg]["gb_s"] for r in runs]
        wall = [r[leg]["estimate_wall"] / r[leg]["wall"] for r in runs]
        print(f"  {leg}: GB-s ratio {fmt_range(gb)}, wall ratio {fmt_range(wall)} ({runs[0][leg]['source']})")
    from batchpredict.cli.client import local_stack_settings
    from batchpredict.estimate import from_jobs

    measured = [from_jobs([r["defaults"]["job"]], local_stack_settings()) for r in runs]
    figures = {
        name: statistics.median(getattr(m, name) for m in measured if m is not None)
        for name in ("billed_ms", "invocations", "write_units", "overhead_seconds")
    }
    print("defaults: " + ", ".join(f"{name}={value:.4g}" for name, value in figures.items()))


def main(argv: Sequence[str] | None = None) -> None:
    lst = throughput()
    parser, add = lst.workload_parser(__doc__, images=600)
    add("--seed", type=int, default=0, help="of the workload (default 0)")
    add("--workers", type=int, default=None, help="predict workers (default: one per core)")
    add("--repeat", type=int, default=1, help="runs (default 1)")
    add("--timeout", type=float, default=1800.0, help="give up on a job after this many seconds")
    args = parser.parse_args(argv)
    args.workers = args.workers or len(os.sched_getaffinity(0))
    print(f"{cpu_name()}, {os.cpu_count()} CPUs, load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    workload = lst.ensure_workload(args.samples, args.photos, args.seed, lambda m: print(m, file=sys.stderr))
    run_dir = lst.BENCH / "runs" / time.strftime("estimate-%Y%m%d-%H%M%S")
    files = lst.start_file_server(workload.folder)
    runs = []
    try:
        for n in range(args.repeat):
            runs.append(run(args, files.url, workload, run_dir / f"run-{n + 1}"))
            figures = (
                f"{leg} GB-s {r['estimate_gb_s']:.1f}/{r['gb_s']:.1f},"
                f" wall {r['estimate_wall']:.1f}/{r['wall']:.1f} s"
                for leg, r in runs[-1].items()
            )
            print(f"run {n + 1} (estimate/job): " + "; ".join(figures), flush=True)
    finally:
        files.stop()
    report(runs, args)
    print(f"load after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
