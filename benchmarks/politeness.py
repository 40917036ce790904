"""Politeness to image hosts (issue 19, must show): a job on the local stack against test hosts
that each enforce their own rate and concurrency limits, read from the hosts' own logs.

Each host (batchpredict.local.polite_hosts, all in one separate process, so that the stack's
moto server does not share their interpreter) serves small real JPEGs made from the sample photos
at ``http://127.0.0.1:PORT/img/N.jpg`` and answers 429 with ``Retry-After`` past its requests per
second (a sliding 1 s window of admitted requests) or its concurrent requests; it logs every
request. The manifest has ``--lines`` lines spread evenly over the hosts (``--weights`` to skew),
interleaved, every URL distinct (N is the line's index). The job runs on a fresh local stack
(moto server, DynamoDB Local, ``--workers`` predict workers, ALLOWED_NETWORKS = the hosts' 127.0.0.1:PORT
only) from upload to its final status.

Printed per host, from its log: requests, the share refused (429/503), the attempted rate (the
most requests that arrived in any 1 s window, and the mean) and the most requests in flight,
over the whole job and once its first ``--grace`` seconds (60) have passed; the job's lines by
status and error code; its wall time (upload -> final status) against the bound the slowest host's
limits allow (its lines / its rps). Then a PASS/FAIL line per target of the issue's must-show:
each host refuses <= 10% of the job's requests to it; after the first minute its attempted rate
and concurrency stay within its limits + 10%; no line fails http_error or rate_limited; the wall
time is within 1.3x the bound. (N/A: no request after the grace period, e.g. a tiny job.)

``--all-429-host`` adds a host that answers 429 to everything (``--all-429-shape``), with its
own lines (``--all-429-lines``, default a host's share) beside the same lines of the other hosts,
and runs, right before it, a peer leg of the same job without that host. It reports that host's
lines' final codes, how often each was requested and when they ended (the S3 LastModified of the
result part that holds them, after the upload and after the line's first request; whole seconds
on the local stack's moto server; ``--budget-seconds S`` checks the latter), and each other host's
throughput (its lines / the time its last line ended) against the peer's: not slowed by more
than 10%. A chunk is written when its last line is done, so a chunk that mixes hosts and waits on
the all-429 host's lines shows here.

``--host-rps N`` sends the job option ``x-amz-meta-host-rps`` (``batchpredict submit
--host-rps``) when this code has it, and stops otherwise. ``--check`` exits 1 on any FAIL.

Usage::

    python benchmarks/politeness.py [--lines 3000] [--hosts 5:4:100,20:8:100,50:16:100]
        [--weights 1,1,1] [--workers 2] [--host-rps N] [--grace 60] [--all-429-host
        [--all-429-shape -:-:0:reject-all] [--all-429-lines N] [--budget-seconds S]] [--repeat 1] [--check]
        [--env K=V] [--model build/model/efficientnet-lite0] [--samples build/samples]

Host shapes: ``RPS:CONCURRENCY[:LATENCY_MS][:FLAG...]`` (``-`` for no limit; flags ``reject-all``,
``503``, ``date``, ``no-retry-after``, ``retry=S``, ``count-refused``, ``queue``: see
HostShape.parse).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchpredict.local.host_traffic import Traffic, least_seconds, traffic, within
from batchpredict.local.polite_hosts import IMAGE_PATH, HostShape, Request, read_log

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "build" / "bench" / "runs"
DEFAULT_HOSTS = "5:4:100,20:8:100,50:16:100"
ALL_429_SHAPE = "-:-:0:reject-all"
SUCCEEDED = "SUCCEEDED"
# The codes no line may end with (the must-show).
FORBIDDEN_CODES = ("http_error", "rate_limited")
REFUSED_SHARE = 0.10  # at most this share of a host's requests refused
SLACK = 0.10  # rate and concurrency within the limit + 10%
WALL_FACTOR = 1.3  # the wall time within 1.3x the slowest host's bound
SLOWDOWN = 0.10  # the other hosts' throughput beside an all-429 host: at most 10% lower


@dataclass(frozen=True)
class HostSpec:
    text: str  # as given (HostShape.parse)
    shape: HostShape
    weight: float = 1.0

    @classmethod
    def parse(cls, text: str, weight: float = 1.0) -> HostSpec:
        return cls(text, HostShape.parse(text), weight)


@dataclass
class HostRun:
    spec: HostSpec
    url: str
    lines: list[int]  # the manifest lines at this host
    log: list[Request] = field(default_factory=list)


@dataclass
class LegResult:
    label: str
    job_id: str
    status: str
    wall: float  # upload -> final status, s
    submitted_at: float  # time.time() of the upload
    hosts: list[HostRun]
    outcomes: dict[int, str]  # line -> SUCCEEDED or its error code
    line_ends: dict[int, float]  # line -> s after the upload its result part was written
    summary_duration: float | None = None
    # Writes the limiter's shared host states took (hostlimiter.py): each HOST# item's version
    # counts its successful conditional puts (lost races, also billed, are not in it).
    host_writes: int = 0

    def host_outcomes(self, host: HostRun) -> Counter[str]:
        return Counter(self.outcomes.get(i, "missing") for i in host.lines)

    def bound(self) -> tuple[float, HostRun | None]:
        """The least wall time the hosts' limits allow, and the host that sets it."""
        best: tuple[float, HostRun | None] = (0.0, None)
        for host in self.hosts:
            seconds = least_seconds(len(host.lines), host.spec.shape)
            if seconds is not None and seconds > best[0]:
                best = (seconds, host)
        return best


# ============================================================================ the hosts


@contextmanager
def hosts_process(specs: Sequence[HostSpec], samples: Path) -> Iterator[list[str]]:
    """The hosts in their own process (``python -m batchpredict.local.polite_hosts``): their URLs,
    in the order of ``specs``; they stop when its standard input closes."""
    command = [sys.executable, "-m", "batchpredict.local.polite_hosts", "--samples", str(samples)]
    process = subprocess.Popen(
        [*command, "--", *(spec.text for spec in specs)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        line = process.stdout.readline()
        if not line:
            raise SystemExit(f"the hosts did not start (exit {process.wait()})")
        yield list(json.loads(line)["urls"])
    finally:
        process.stdin.close()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def spread(counts: Sequence[int]) -> list[int]:
    """The host of each manifest line: each host's lines spread evenly over the manifest."""
    slots = [((k + 0.5) / count, host) for host, count in enumerate(counts) for k in range(count)]
    return [host for _, host in sorted(slots)]


def host_counts(lines: int, weights: Sequence[float]) -> list[int]:
    """``lines`` split by ``weights`` (largest remainders), every line placed."""
    total = sum(weights)
    exact = [lines * w / total for w in weights]
    counts = [int(x) for x in exact]
    for i in sorted(range(len(weights)), key=lambda i: counts[i] - exact[i])[: lines - sum(counts)]:
        counts[i] += 1
    return counts


def write_manifest(path: Path, urls: Sequence[str], counts: Sequence[int]) -> list[list[int]]:
    """The manifest (one URL a line, ``{host}/img/{line}.jpg``); each host's line indices."""
    owners = spread(counts)
    lines: list[list[int]] = [[] for _ in urls]
    with path.open("w") as out:
        for index, host in enumerate(owners):
            out.write(f"{urls[host]}/img/{index}.jpg\n")
            lines[host].append(index)
    return lines


# ============================================================================ a job leg


def job_options(host_rps: float | None) -> Any:
    """The job's options: ``host-rps`` through the code's own option parser, when it has one."""
    if host_rps is None:
        return None
    from batchpredict.options import OptionError, parse_options

    try:
        return parse_options({"host-rps": f"{host_rps:g}"})
    except OptionError as exc:
        raise SystemExit(f"--host-rps: this code has no x-amz-meta-host-rps option ({exc})") from exc


def line_end_times(client: Any, job_id: str, submitted_at: float) -> dict[int, float]:
    """When each line's result was written, in s after the upload: the LastModified of the
    result part that holds it (the latest, should a line be in several)."""
    s3, bucket = client.s3, client.stack.output_bucket
    ends: dict[int, float] = {}
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"results/{job_id}/parts/")
    for page in pages:
        for item in page.get("Contents", []):
            written = item["LastModified"].timestamp() - submitted_at
            body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read().decode()
            for line in body.splitlines():
                if line.strip():
                    index = int(json.loads(line)["index"])
                    ends[index] = max(ends.get(index, written), written)
    return ends


def host_state_writes(client: Any) -> int:
    """The successful writes of every HOST# item of the stack's table (its version)."""
    jobs = client.jobs
    pages = jobs.client.get_paginator("scan").paginate(
        TableName=jobs.table,
        FilterExpression="begins_with(pk, :h)",
        ExpressionAttributeValues={":h": {"S": "HOST#"}},
    )
    return sum(int(item.get("version", {}).get("N", "0")) for page in pages for item in page["Items"])


def outcome(record: Any) -> str:
    return SUCCEEDED if record.status == SUCCEEDED else (record.error.code if record.error else "?")


def results(client: Any, job_id: str, status: str) -> tuple[dict[int, str], dict[str, Any]]:
    """Each line's outcome and the job's _summary.json; none of either for a job that ended without
    them (FAILED: its error is printed, and its lines count as missing)."""
    from batchpredict.cli.client import UserError

    try:
        return {r.index: outcome(r) for r in client.result_lines(job_id)}, client.summary(job_id)
    except UserError as exc:
        job = client.jobs.get(job_id)
        print(f"job {job_id} {status} without results: {exc}; its error: {job.error if job else '?'}")
        return {}, {}


def run_leg(
    args: argparse.Namespace, label: str, specs: Sequence[HostSpec], counts: Sequence[int], folder: Path
) -> LegResult:
    """One job on a fresh local stack against fresh hosts."""
    from batchpredict.cli.client import Client
    from batchpredict.jobs import FINAL_STATUSES
    from batchpredict.local.provision import LocalOptions
    from batchpredict.local.stack import LocalStack

    folder.mkdir(parents=True, exist_ok=True)
    with hosts_process(specs, args.samples) as urls:
        lines = write_manifest(folder / "manifest.txt", urls, counts)
        hosts = [HostRun(spec, url, own) for spec, url, own in zip(specs, urls, lines, strict=True)]
        options = LocalOptions(
            model_uri=str(args.model.resolve()),
            prefix="polite",
            allowed_networks=",".join(url.removeprefix("http://") for url in urls),
            predict_workers=args.workers,
            environment=dict(args.env),
        )
        say(f"  {label}: starting the local stack ({args.workers} predict workers)")
        stack = LocalStack(options, log_dir=folder / "logs", serve_api=False)
        ref = stack.start()
        try:
            client = Client(ref)
            say(f"  {label}: {sum(counts)} lines over {len(specs)} hosts")
            submitted_at, started = time.time(), time.monotonic()
            job_id = client.submit(folder / "manifest.txt", options=job_options(args.host_rps))
            while (job := client.jobs.get(job_id)) is None or job.status not in FINAL_STATUSES:
                if time.monotonic() - started > args.timeout:
                    raise SystemExit(f"{label}: job {job_id} not final after {args.timeout:.0f} s: {job}")
                time.sleep(0.25)
            wall = time.monotonic() - started
            client._await_summary(job_id, 0.25)
            outcomes, summary = results(client, job_id, job.status.value)
            ends = line_end_times(client, job_id, submitted_at)
            writes = host_state_writes(client)
        finally:
            stack.stop()
        for host in hosts:
            host.log = read_log(host.url)
    return LegResult(
        label,
        job_id,
        job.status.value,
        wall,
        submitted_at,
        hosts,
        outcomes,
        ends,
        summary.get("duration_seconds"),
        writes,
    )


# ============================================================================ the report


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def verdict(ok: bool | None) -> str:
    return "N/A " if ok is None else ("PASS" if ok else "FAIL")


def fmt_counts(counts: Counter[str]) -> str:
    return ", ".join(f"{name} {n}" for name, n in counts.most_common())


def describe_traffic(t: Traffic) -> str:
    if not t.requests:
        return "no requests"
    return (
        f"{t.requests} requests, {t.refused} refused ({t.refused_share:.1%}); max {t.max_rate} in any "
        f"{t.window:g} s window, mean {t.mean_rate:.1f}/s over {t.period:.0f} s; "
        f"max {t.max_concurrency} in flight"
    )


def host_traffic(leg: LegResult, host: HostRun, grace: float) -> tuple[Traffic, Traffic]:
    """(the whole job, after its first ``grace`` seconds), to its final status."""
    until = leg.submitted_at + leg.wall
    window = host.spec.shape.window
    whole = traffic(host.log, leg.submitted_at, until, window)
    late = traffic(host.log, leg.submitted_at + grace, until, window)
    return whole, late


def checks(leg: LegResult, grace: float) -> list[tuple[bool | None, str]]:
    """The must-show's targets for this leg: (passed, what); passed None when not measurable."""
    found: list[tuple[bool | None, str]] = []
    for n, host in enumerate(leg.hosts, 1):
        shape = host.spec.shape
        if shape.reject_all:
            continue
        whole, late = host_traffic(leg, host, grace)
        found.append(
            (
                whole.refused_share <= REFUSED_SHARE if whole.requests else None,
                f"host {n}: refused {whole.refused_share:.1%} of its {whole.requests} requests "
                f"(<= {REFUSED_SHARE:.0%})",
            )
        )
        after = f"host {n}: after the first {grace:g} s, max"
        limits = [
            (
                shape.per_window if shape.rps else None,
                late.max_rate,
                f"requests in any {late.window:g} s window",
            ),
            (shape.concurrency, late.max_concurrency, "in flight"),
        ]
        for limit, value, what in limits:
            if limit is not None:
                ok = within(value, limit, SLACK) if late.requests else None
                found.append(
                    (ok, f"{after} {value} {what} (limit {limit}, +{SLACK:.0%} = {limit * (1 + SLACK):g})")
                )
    served = [i for host in leg.hosts if not host.spec.shape.reject_all for i in host.lines]
    bad = Counter(c for i in served if (c := leg.outcomes.get(i, "missing")) in (*FORBIDDEN_CODES, "missing"))
    found.append(
        (
            not bad,
            f"no line of a serving host failed {' or '.join(FORBIDDEN_CODES)} (or is missing)"
            + (f": {fmt_counts(bad)}" if bad else ""),
        )
    )
    bound, _ = leg.bound()
    found.append(
        (
            leg.wall <= WALL_FACTOR * bound if bound else None,
            f"wall {leg.wall:.1f} s <= {WALL_FACTOR:g}x the bound {bound:.1f} s "
            f"= {WALL_FACTOR * bound:.1f} s",
        )
    )
    return found


def print_leg(leg: LegResult, grace: float) -> list[tuple[bool | None, str]]:
    bound, slowest = leg.bound()
    which = ""
    if slowest is not None:
        n = leg.hosts.index(slowest) + 1
        which = f" (host {n}: {len(slowest.lines)} lines at {slowest.spec.shape.describe()})"
    summary = f"; _summary.json duration {leg.summary_duration:.1f} s" if leg.summary_duration else ""
    print(
        f"\n{leg.label}: job {leg.job_id} {leg.status}, wall {leg.wall:.1f} s "
        f"(upload -> final status){summary}"
    )
    print(f"  bound {bound:.1f} s{which}: wall / bound {leg.wall / bound:.2f}" if bound else "  bound: none")
    everything = Counter(leg.outcomes.values())
    total = sum(len(h.lines) for h in leg.hosts)
    print(f"  lines by status and code: {fmt_counts(everything)} (of {total})")
    per_thousand = 1000 * leg.host_writes / total if total else 0.0
    print(f"  host-limit writes (HOST# items' versions): {leg.host_writes}, {per_thousand:.0f} a 1,000 lines")
    for n, host in enumerate(leg.hosts, 1):
        whole, late = host_traffic(leg, host, grace)
        print(f"  host {n} {host.url}: {host.spec.shape.describe()}")
        print(f"    {len(host.lines)} lines: {fmt_counts(leg.host_outcomes(host))}")
        print(f"    whole job:         {describe_traffic(whole)}")
        print(f"    after first {grace:3g} s: {describe_traffic(late)}")
        if queued := [r.queued for r in host.log if r.queued > 0]:
            print(f"    {len(queued)} requests waited their turn: up to {max(queued):.1f} s")
    found = checks(leg, grace)
    for ok, what in found:
        print(f"  {verdict(ok)} {what}")
    return found


def host_finish(leg: LegResult, host: HostRun) -> float | None:
    """When the host's last line's result was written, in s after the upload."""
    ends = [leg.line_ends[i] for i in host.lines if i in leg.line_ends]
    return max(ends) if len(ends) == len(host.lines) and ends else None


def line_attempts(leg: LegResult, host: HostRun) -> dict[int, list[float]]:
    """Each of the host's lines' request arrivals, in s after the upload (from its log)."""
    attempts: dict[int, list[float]] = {i: [] for i in host.lines}
    for request in host.log:
        match = IMAGE_PATH.match(request.path.split("?", 1)[0])
        if match and int(match[1]) in attempts:
            attempts[int(match[1])].append(request.arrived - leg.submitted_at)
    return attempts


def print_refusing_host(leg: LegResult, host: HostRun, budget: float | None) -> list[tuple[bool | None, str]]:
    """An all-429 host's lines: final codes, when they ended, how long and how often each was tried."""
    codes = leg.host_outcomes(host)
    print(f"  all-429 host {host.url}: {len(host.lines)} lines: {fmt_counts(codes)}")
    found: list[tuple[bool | None, str]] = [
        (codes == Counter({"rate_limited": len(host.lines)}), "all-429 host: every line rate_limited")
    ]
    ends = sorted(leg.line_ends[i] for i in host.lines if i in leg.line_ends)
    if not ends:
        return found
    print(
        f"    results written {ends[0]:.0f} to {ends[-1]:.0f} s after the upload (median "
        f"{statistics.median(ends):.0f} s; S3 LastModified, whole seconds)"
    )
    attempts = line_attempts(leg, host)
    tried = [len(times) for times in attempts.values()]
    spans = [leg.line_ends[i] - min(t) for i, t in attempts.items() if t and i in leg.line_ends]
    print(
        f"    requests a line: {min(tried)} to {max(tried)} (median {statistics.median(tried):g}); "
        + (
            f"first request -> result written: {min(spans):.0f} to {max(spans):.0f} s "
            f"(median {statistics.median(spans):.0f} s)"
            if spans
            else "no line was requested"
        )
    )
    if budget is not None:
        longest = max(spans, default=0.0)
        found.append(
            (
                longest <= budget + 1,  # + 1: LastModified has whole seconds
                f"all-429 host: every line ended within {budget:g} s of its first request "
                f"(longest {longest:.0f} s)",
            )
        )
    return found


def print_all_429(leg: LegResult, peer: LegResult, budget: float | None) -> list[tuple[bool | None, str]]:
    """The all-429 host's lines, and the other hosts' throughput against the peer leg's."""
    found: list[tuple[bool | None, str]] = []
    print(f"\n{leg.label} against {peer.label} (the same hosts and lines, without the all-429 host):")
    for host in (h for h in leg.hosts if h.spec.shape.reject_all):
        found += print_refusing_host(leg, host, budget)
    ratios = []
    for n, (host, twin) in enumerate(zip(leg.hosts, peer.hosts, strict=False), 1):
        done, twin_done = host_finish(leg, host), host_finish(peer, twin)
        if done is None or twin_done is None:
            print(f"  host {n}: n/a (lines without a result part)")
            continue
        ratio = (len(host.lines) / done) / (len(twin.lines) / twin_done)
        ratios.append(ratio)
        middle = statistics.median(leg.line_ends[i] for i in host.lines)
        twin_middle = statistics.median(peer.line_ends[i] for i in twin.lines)
        print(
            f"  host {n}: last line ended {done:.0f} s vs {twin_done:.0f} s: "
            f"{len(host.lines) / done:.2f} vs {len(twin.lines) / twin_done:.2f} lines/s, {ratio:.2f}x "
            f"(median line {middle:.0f} s vs {twin_middle:.0f} s)"
        )
    lowest = min(ratios, default=None)
    found.append(
        (
            lowest >= 1 - SLOWDOWN if lowest is not None else None,
            f"the other hosts not slowed by more than {SLOWDOWN:.0%}: lowest throughput ratio "
            + (f"{lowest:.2f}x" if lowest is not None else "n/a"),
        )
    )
    for ok, what in found:
        print(f"  {verdict(ok)} {what}")
    return found


# ============================================================================ main


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--hosts", default=DEFAULT_HOSTS, help=f"host shapes, comma-separated (default {DEFAULT_HOSTS})")
    add("--weights", default=None, help="share of the lines of each host, comma-separated (default even)")
    add("--lines", type=int, default=3000, help="manifest lines over the hosts (default 3000)")
    add("--workers", type=int, default=2, help="predict workers (default 2)")
    add("--host-rps", type=float, default=None, help="the job's x-amz-meta-host-rps (if this code has it)")
    add("--grace", type=float, default=60.0, help="seconds after the upload before the limits are checked")
    add(
        "--all-429-host",
        action="store_true",
        help="add a host that refuses everything; run a peer without it",
    )
    add("--all-429-shape", default=ALL_429_SHAPE, help=f"that host's shape (default {ALL_429_SHAPE})")
    add("--all-429-lines", type=int, default=None, help="that host's lines (default: lines / hosts)")
    add(
        "--budget-seconds",
        type=float,
        default=None,
        help="with --all-429-host: check each of its lines ended within this many s of its first request",
    )
    add("--repeat", type=int, default=1, help="runs (default 1)")
    add("--check", action="store_true", help="exit 1 when a target FAILs")
    add("--env", type=_pair, action="append", default=[], help="function setting K=V (repeatable)")
    add("--timeout", type=float, default=1800.0, help="give up on a job after this many seconds")
    add("--model", type=Path, default=ROOT / "build" / "model" / "efficientnet-lite0", help="model bundle")
    add("--samples", type=Path, default=ROOT / "build" / "samples", help="photos the hosts serve")
    args = parser.parse_args(argv)
    try:
        texts = [t for t in args.hosts.split(",") if t.strip()]
        weights = [float(w) for w in args.weights.split(",")] if args.weights else [1.0] * len(texts)
        if len(weights) != len(texts) or min(weights) <= 0:
            parser.error("--weights: one positive weight per host")
        args.specs = [HostSpec.parse(t, w) for t, w in zip(texts, weights, strict=True)]
        args.reject = HostSpec.parse(args.all_429_shape)
    except ValueError as exc:
        parser.error(str(exc))
    if not args.specs or args.lines < len(args.specs) or args.workers < 1 or args.repeat < 1:
        parser.error("need a host, at least a line a host, --workers >= 1 and --repeat >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    job_options(args.host_rps)  # refuse an option this code lacks before starting anything
    counts = host_counts(args.lines, [s.weight for s in args.specs])
    print(f"{cpu_name()}, {os.cpu_count()} CPUs, load {load()} (1/5/15 min)")
    print(f"{args.lines} lines, {args.workers} predict workers, host-rps option {args.host_rps or 'none'}")
    for n, (spec, count) in enumerate(zip(args.specs, counts, strict=True), 1):
        print(f"  host {n}: {spec.shape.describe()}; {count} lines")
    run_dir = RUNS / time.strftime("politeness-%Y%m%d-%H%M%S")
    results: list[tuple[bool | None, str]] = []
    walls: list[float] = []
    for run in range(1, args.repeat + 1):
        say(f"run {run} of {args.repeat}")
        folder = run_dir / f"run-{run}"
        if args.all_429_host:
            extra = args.all_429_lines or max(1, args.lines // len(args.specs))
            peer = run_leg(args, f"run {run}, peer (no all-429 host)", args.specs, counts, folder / "peer")
            results += print_leg(peer, args.grace)
            leg = run_leg(
                args,
                f"run {run}, with the all-429 host",
                [*args.specs, args.reject],
                [*counts, extra],
                folder / "leg",
            )
            results += print_leg(leg, args.grace)
            results += print_all_429(leg, peer, args.budget_seconds)
        else:
            leg = run_leg(args, f"run {run}", args.specs, counts, folder)
            results += print_leg(leg, args.grace)
        walls.append(leg.wall)
    print(f"\nwall {min(walls):.1f}-{max(walls):.1f} s over {len(walls)} run(s); load after {load()}")
    failed = sum(ok is False for ok, _ in results)
    print(f"{len(results)} checks: {sum(ok is True for ok, _ in results)} PASS, {failed} FAIL, "
          f"{sum(ok is None for ok, _ in results)} N/A; logs under {run_dir}")  # fmt: skip
    if args.check and failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
