"""Fairness between jobs on the local stack (issue 19, part 5): a small job submitted a few seconds
after a large one, against the same small job alone on an idle stack.

The workload: ``--photos`` small JPEGs (``--side`` px on the longer side), made once from the
sample photos and cached under build/bench/. A separate server process (this script with
``--serve-photos``) serves them with a comment segment naming the request's line number inserted
after the JPEG's start marker, so every line's bytes differ (nothing a byte-level dedupe could
skip) and every line is a real image that is fetched, decoded and inferred. Each line has its own
URL.

Each leg starts the local stack as ``batchpredict local run`` does (moto server, DynamoDB Local,
``--workers`` predict workers on CPU slots, no scale-out beyond them) in this process, runs a
warm-up job (every predict worker loads its model), then:

1. ``alone``: the small job (``--small`` lines) on the idle stack, submit -> final status;
2. ``behind``: the large job (``--images`` lines), and ``--delay`` seconds after its upload the
   same small job under another key: its time, submit -> final status, and how far the large job
   had got by then. The stack then stops (the large job with it).

A leg runs with the work queue delivering as Amazon SQS fair queues do (the splitter sends every
chunk with MessageGroupId = its job id; the local SQS emulates the order: local/sqs_depth.py);
``--no-fair`` also runs a leg, first, whose queue ignores the groups and delivers in send order, as
a standard queue without fair queues does (main's behaviour before issue 19): before and after
in the same run. It prints each leg's times and behind / alone, with the CPU's name, the load and
the machine's busy CPU-seconds over each leg.

Usage::

    python benchmarks/fairness.py [--images 20000] [--small 20] [--delay 5] [--no-fair]
        [--repeat 1] [--workers N] [--photos 8] [--side 320]
        [--model build/model/efficientnet-lite0] [--samples build/samples]
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

SCRIPT = Path(__file__).resolve()
sys.path.insert(0, str(SCRIPT.parent))
# chaos.py's helpers: local_stack_throughput.py (server processes, /proc figures) and the CPU's name.
chaos: ModuleType = importlib.import_module("chaos")
sys.path.remove(str(SCRIPT.parent))
lst: ModuleType = chaos.throughput()
BENCH: Path = lst.BENCH
SOURCE_SUFFIXES: tuple[str, ...] = lst.SOURCE_SUFFIXES

PHOTOS_VERSION = 1  # bump when make_photos changes: the cache folder is keyed by it
POLL_SECONDS = 0.2


# ============================================================================ the workload


def make_photos(samples: Path, count: int, side: int) -> Path:
    """``count`` small JPEGs from the sample photos (``side`` px on the longer side), cached."""
    from PIL import Image

    sources = sorted(p for p in samples.iterdir() if p.suffix.lower() in SOURCE_SUFFIXES)
    if not sources:
        raise SystemExit(f"{samples}: no sample photos (run `make samples`)")
    folder = BENCH / f"fairness-photos-v{PHOTOS_VERSION}-n{count}-s{side}"
    if len(list(folder.glob("*.jpg"))) == count:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        with Image.open(sources[i % len(sources)]) as image:
            photo = image.convert("RGB")
        photo.thumbnail((side, side))
        out = io.BytesIO()
        photo.save(out, "JPEG", quality=85)
        (folder / f"p{i:03d}.jpg").write_bytes(out.getvalue())
    return folder


def serve_photos(folder: Path) -> None:
    """Serve ``folder``'s JPEGs on a free loopback port (printed first), each answer with a JPEG
    comment (COM) segment holding the request's query inserted after the start marker."""
    import http.server

    photos = {p.name: p.read_bytes() for p in folder.glob("*.jpg")}

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            name, _, query = self.path.lstrip("/").partition("?")
            photo = photos.get(name)
            if photo is None:
                self.send_error(404)
                return
            comment = query.encode()[:1000]
            body = photo[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + photo[2:]
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


def start_photo_server(folder: Path) -> Any:
    def port(line: str) -> int | None:
        return int(line) if line.strip().isdigit() else None

    command = [sys.executable, "-u", str(SCRIPT), "--serve-photos", str(folder)]
    return lst.start_server("photo server", command, port)


def write_manifest(path: Path, url: str, photos: list[str], lines: int, tag: str) -> Path:
    with path.open("w") as out:
        for i in range(lines):
            out.write(f"{url}/{photos[i % len(photos)]}?job={tag}&n={i}\n")
    return path


# ============================================================================ a leg


@dataclass
class Leg:
    fair: bool
    alone: float  # the small job's seconds, submit -> final status, on the idle stack
    behind: float  # the same, submitted --delay s after the large job's upload
    statuses: tuple[str, str]  # the small job's final status: alone, behind
    large_done: int  # the large job's lines done when the small one ended
    large_total: int
    busy_cpu: float  # the machine's busy CPU-seconds over the leg
    seconds: float  # the leg's wall time (stack start -> stop)

    @property
    def name(self) -> str:
        return "fair" if self.fair else "no-fair"

    @property
    def ratio(self) -> float:
        return self.behind / self.alone


def wait_final(client: Any, job_id: str, submitted: float, timeout: float) -> tuple[float, Any]:
    """Seconds from ``submitted`` (monotonic) until the job's status is final, and the job."""
    from batchpredict.jobs import FINAL_STATUSES

    while (job := client.jobs.get(job_id)) is None or job.status not in FINAL_STATUSES:
        if time.monotonic() - submitted > timeout:
            raise SystemExit(f"job {job_id} not final after {timeout:.0f} s")
        time.sleep(POLL_SECONDS)
    return time.monotonic() - submitted, job


def timed_job(client: Any, manifest: Path, key: str, timeout: float) -> tuple[float, Any]:
    submitted = time.monotonic()
    job_id = client.submit(manifest, key=key)
    return wait_final(client, job_id, submitted, timeout)


def run_leg(args: argparse.Namespace, fair: bool, url: str, photos: list[str], run_dir: Path) -> Leg:
    from batchpredict.cli.client import Client
    from batchpredict.local.provision import LocalOptions
    from batchpredict.local.stack import LocalStack

    run_dir.mkdir(parents=True, exist_ok=True)
    # A prefix per leg: the moto server's state lives on in this process after a stack stops.
    prefix = run_dir.name
    options = LocalOptions(
        model_uri=str(args.model.resolve()),
        prefix=prefix,
        allowed_networks="127.0.0.1",
        predict_workers=args.workers,
        max_predict_workers=args.workers,  # the same capacity in both halves of the leg
        fair_queues=fair,
    )
    busy, started = lst.machine_busy(), time.monotonic()
    stack = LocalStack(options, log_dir=run_dir / "logs", serve_api=False)
    client = Client(stack.start())
    try:
        manifests = {
            name: write_manifest(run_dir / f"{name}.txt", url, photos, lines, f"{prefix}-{name}")
            for name, lines in (
                ("warmup", args.warmup),
                ("small-alone", args.small),
                ("large", args.images),
                ("small-behind", args.small),
            )
        }
        timed_job(client, manifests["warmup"], "warmup.txt", args.timeout)
        alone, alone_job = timed_job(client, manifests["small-alone"], "small-alone.txt", args.timeout)
        large_id = client.submit(manifests["large"], key="large.txt")
        time.sleep(args.delay)
        behind, behind_job = timed_job(client, manifests["small-behind"], "small-behind.txt", args.timeout)
        large = client.jobs.get(large_id)
    finally:
        stack.stop()
    return Leg(
        fair,
        alone,
        behind,
        (alone_job.status.value, behind_job.status.value),
        large.succeeded + large.failed if large else 0,
        args.images,
        lst.machine_busy() - busy,
        time.monotonic() - started,
    )


# ============================================================================ the report


def fmt_range(values: Sequence[float], digits: int = 1) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def describe(leg: Leg, run: int) -> str:
    return (
        f"{leg.name:8} run {run}: small job alone {leg.alone:6.2f} s, behind the large job "
        f"{leg.behind:6.2f} s ({leg.ratio:.2f}x; {'/'.join(leg.statuses)}); large job "
        f"{leg.large_done:,}/{leg.large_total:,} lines done by then; leg {leg.seconds:.0f} s, "
        f"machine busy {leg.busy_cpu:.0f} CPU-s"
    )


def report(legs: list[Leg], args: argparse.Namespace) -> None:
    print(
        f"\n{args.small}-line job submitted {args.delay:g} s after a {args.images:,}-line job, "
        f"{args.workers} predict workers, {args.repeat} run(s)"
    )
    print(f"  {'queue':8} {'alone s':>24} {'behind s':>24} {'behind / alone':>24}")
    for fair in modes(args):
        mine = [leg for leg in legs if leg.fair == fair]
        cells = (
            fmt_range([leg.alone for leg in mine]),
            fmt_range([leg.behind for leg in mine]),
            fmt_range([leg.ratio for leg in mine], 2) + "x",
        )
        print(f"  {mine[0].name:8} " + " ".join(f"{c:>24}" for c in cells))
    if len(modes(args)) == 2:
        before = [leg.behind for leg in legs if not leg.fair]
        after = [leg.behind for leg in legs if leg.fair]
        gain = statistics.median(before) / statistics.median(after)
        print(f"behind the large job, no-fair / fair: {gain:.1f}x")


def modes(args: argparse.Namespace) -> tuple[bool, ...]:
    """The legs of a run: the queue without fair queues first (--no-fair), then with them."""
    return (False, True) if args.no_fair else (True,)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add(
        "--model", type=Path, default=lst.ROOT / "build" / "model" / "efficientnet-lite0", help="model bundle"
    )
    add(
        "--samples",
        type=Path,
        default=lst.ROOT / "build" / "samples",
        help="photos the workload is made from",
    )
    add("--images", type=int, default=20000, help="lines of the large job (default 20000)")
    add("--small", type=int, default=20, help="lines of the small job (default 20)")
    add("--delay", type=float, default=5.0, help="seconds between the two uploads (default 5)")
    add("--photos", type=int, default=8, help="distinct photos (default 8)")
    add("--side", type=int, default=320, help="the photos' longer side in px (default 320)")
    add("--warmup", type=int, default=0, help="lines of the warm-up job (default: 2 batches a worker)")
    add("--workers", type=int, default=None, help="predict workers (default: one per core)")
    add("--no-fair", action="store_true", help="also run a leg whose queue ignores MessageGroupId")
    add("--repeat", type=int, default=1, help="runs (default 1)")
    add("--timeout", type=float, default=3600.0, help="give up on a job after this many seconds")
    add("--serve-photos", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.workers = args.workers or len(os.sched_getaffinity(0))
    # Two work-queue batches (8 chunks of 16 lines, the template's defaults) per worker.
    args.warmup = args.warmup or 2 * 8 * 16 * args.workers
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.serve_photos:
        return serve_photos(args.serve_photos)
    print(f"{chaos.cpu_name()}, {os.cpu_count()} CPUs, load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    folder = make_photos(args.samples, args.photos, args.side)
    photos = sorted(p.name for p in folder.glob("*.jpg"))
    run_dir = BENCH / "runs" / time.strftime("fairness-%Y%m%d-%H%M%S")
    server = start_photo_server(folder)
    legs: list[Leg] = []
    try:
        for n in range(args.repeat):
            for fair in modes(args):
                name = f"{'fair' if fair else 'nofair'}{n + 1}"
                legs.append(run_leg(args, fair, server.url, photos, run_dir / name))
                print(describe(legs[-1], n + 1), flush=True)
    finally:
        server.stop()
    report(legs, args)
    print(f"load after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
