"""A job on the local stack while its workers are killed: every line exactly once, and what the
kills cost the job against the same job unhurt.

The workload is benchmarks/local_stack_throughput.py's (distinct JPEGs of web sizes, served by a
separate ``http.server`` process, each line its own URL). Each leg starts the local stack as
``batchpredict local run`` does (moto server, DynamoDB Local, worker processes provisioned from
the SAM template; timeouts capped at 60 s) in a subprocess, submits the manifest and waits for a
final status. In a chaos leg, ``--kills`` workers of the predict and finalize pools are killed
by SIGKILL within the first ``--within`` seconds after the upload, evenly spaced, each a random
live worker (a seeded choice: the same times and draws for every leg); the runner replaces each,
as Lambda starts a new execution environment. An unhurt leg runs the same job without kills.

Each leg checks the job from the outside: results.jsonl holds every manifest line once, in order
(indices 0 .. N-1); the IMG# rows are N, one per index; the JOB record's counts add up to N with
every chunk counted; its status. It prints each leg's time (upload -> final status), the chaos
leg against the unhurt one, what was killed (by function) and how many workers were replaced.

``--before REF`` runs the same legs on the code of git REF (a worktree under build/bench/, as
local_stack_throughput.py makes it, with the current DynamoDB Local JVM flags) before each run of
the current code. ``--repeat N`` runs them N times and prints ranges.

Usage::

    python benchmarks/chaos.py [--images 1500] [--kills 24] [--within 90] [--repeat 1]
        [--before ef53bdf] [--seed 0] [--workers N]
        [--model build/model/efficientnet-lite0] [--samples build/samples]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import random
import signal
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

# Only the standard library at module level: a leg runs this file with an older tree's batchpredict
# first on PYTHONPATH.

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve()
KILLED = ("PredictFunction", "FinalizeFunction")  # the pools whose workers are killed
FINAL = ("COMPLETED", "COMPLETED_WITH_ERRORS", "FAILED", "CANCELLED")


def throughput() -> ModuleType:
    """benchmarks/local_stack_throughput.py: the workload, the file server, the worktrees."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        return importlib.import_module("local_stack_throughput")
    finally:
        sys.path.remove(str(SCRIPT.parent))


# ============================================================================ the chaos


@dataclass(frozen=True)
class Kill:
    at: float  # seconds after the upload
    function: str
    pid: int


class Killer:
    """Kills ``count`` workers of ``functions`` within ``within`` seconds of ``start()``, evenly
    spaced (the last at ``within``), each a random live one (``seed``): SIGKILL, no warning."""

    def __init__(
        self,
        workers: dict[str, list[Any]],
        count: int,
        within: float,
        seed: int,
        functions: Sequence[str] = KILLED,
    ) -> None:
        self.workers = workers  # the runner's pools: function -> processes
        self.times = [within * (k + 1) / count for k in range(count)] if count else []
        self.functions = functions
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="killer", daemon=True)
        self.kills: list[Kill] = []
        self._started = 0.0

    def start(self) -> None:
        self._started = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        for at in self.times:
            if self._stop.wait(max(0.0, self._started + at - time.monotonic())):
                return
            live = [
                (function, process)
                for function in self.functions
                for process in list(self.workers.get(function, []))
                if process.poll() is None
            ]
            if not live:
                continue
            function, process = self._rng.choice(live)
            try:
                os.kill(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            self.kills.append(Kill(round(time.monotonic() - self._started, 2), function, process.pid))


def check_exactly_once(client: Any, job_id: str, total: int) -> dict[str, Any]:
    """What the job holds, read back as a user would: results.jsonl's lines, the IMG# rows, the
    JOB record. ``exactly_once``: every manifest line once in each, and the counts add up."""
    lines = [_doc(line) for line in client.result_lines(job_id)]
    rows = [_doc(row) for row in client.result_lines(job_id, from_table=True)]
    job = client.job(job_id)
    indices = [int(doc["index"]) for doc in lines]
    row_indices = Counter(int(doc["index"]) for doc in rows)
    codes = Counter((doc.get("error") or {}).get("code", "SUCCEEDED") for doc in lines)
    counted = (job.total, job.succeeded + job.failed, job.chunks_done) == (total, total, job.chunks_total)
    return {
        "status": job.status.value,
        "lines": len(lines),
        "lines_in_order": indices == list(range(total)),
        "rows": len(rows),
        "rows_once": set(row_indices) == set(range(total)) and set(row_indices.values()) == {1},
        "counted": counted,
        "codes": dict(codes),
        "exactly_once": indices == list(range(total)) and len(rows) == total and counted,
    }


def _doc(line: Any) -> dict[str, Any]:
    """A result line as a dict: a ResultRecord, or a dict in trees from before the typed record."""
    return line if isinstance(line, dict) else line.to_json()


def chaos_job(
    stack: Any,
    client: Any,
    manifest: Path,
    total: int,
    *,
    kills: int,
    within: float,
    seed: int,
    timeout: float = 1800.0,
    poll: Callable[[], None] = lambda: time.sleep(0.2),
) -> dict[str, Any]:
    """Submit ``manifest`` to a started local stack, kill its workers as ``Killer`` does, wait for
    a final status, check every line is there exactly once. The leg's figures, as a dict."""
    killer = Killer(stack.runner.workers, kills, within, seed)
    replaced = stack.runner.replaced
    started = time.perf_counter()
    job_id = client.submit(manifest)
    killer.start()
    counted_at = None  # when every line was counted: predict's part done, finalize's to come
    try:
        while True:
            job = client.jobs.get(job_id)
            if counted_at is None and job is not None and job.total == job.succeeded + job.failed == total:
                counted_at = time.perf_counter() - started
            if job is not None and job.status.value in FINAL:
                break
            if time.perf_counter() - started > timeout:
                raise TimeoutError(f"job {job_id} not done after {timeout:.0f} s: {job}")
            poll()
        wall = time.perf_counter() - started
    finally:
        killer.stop()
    return {
        "job_id": job_id,
        "wall": wall,
        "counted_at": counted_at if counted_at is not None else wall,
        "kills": [asdict(k) for k in killer.kills],
        "replaced": stack.runner.replaced - replaced,
        **check_exactly_once(client, job_id, total),
    }


# ============================================================================ a leg


@dataclass
class LegSpec:
    label: str
    tree: str
    model: str
    manifest: str
    total: int
    workers: int
    kills: int
    within: float
    seed: int
    log_dir: str
    out: str
    timeout: float


def run_leg(spec: LegSpec) -> None:
    """Worker: the local stack of whichever batchpredict is first on sys.path; one job; JSON out."""
    import inspect

    from batchpredict.local.provision import LocalOptions
    from batchpredict.local.stack import LocalStack

    options = LocalOptions(
        model_uri=spec.model,
        prefix="chaos",
        allowed_networks="127.0.0.1",
        predict_workers=spec.workers,
        environment={"INFERENCE_THREADS": "1"},
    )
    extra = {"serve_api": False} if "serve_api" in inspect.signature(LocalStack).parameters else {}
    stack = LocalStack(options, log_dir=Path(spec.log_dir), warn=lambda m: print(m, file=sys.stderr), **extra)
    ref = stack.start()
    try:
        client = throughput().client_class()(ref)
        result = chaos_job(
            stack,
            client,
            Path(spec.manifest),
            spec.total,
            kills=spec.kills,
            within=spec.within,
            seed=spec.seed,
            timeout=spec.timeout,
        )
    finally:
        stack.stop()
    Path(spec.out).write_text(json.dumps({"label": spec.label, **result}))


def leg(spec: LegSpec, say: Callable[[str], None]) -> dict[str, Any]:
    """Run one leg in a subprocess, on its tree's code (an older tree: the current DynamoDB Local
    JVM flags, as local_stack_throughput.py's --before legs)."""
    from batchpredict.local.dynamodb_local import JVM_OPTIONS

    tree = Path(spec.tree)
    env = dict(os.environ)
    # The tree's own package first: the venv's may be another checkout's (an editable install).
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tree / "functions"), env.get("PYTHONPATH", "")) if p)
    if tree != ROOT:
        env["JDK_JAVA_OPTIONS"] = " ".join([*JVM_OPTIONS, env.get("JDK_JAVA_OPTIONS", "")]).strip()
    say(
        f"  {spec.label}: {spec.kills} kills within {spec.within:g} s"
        if spec.kills
        else f"  {spec.label}: unhurt"
    )
    result: dict[str, Any] = throughput().leg_process(SCRIPT, asdict(spec), tree, env)
    return result


# ============================================================================ the report


@dataclass
class Pair:
    """One run of a tree: the job unhurt, then with kills."""

    unhurt: dict[str, Any]
    chaos: dict[str, Any]

    @property
    def cost(self) -> float:
        return float(self.chaos["wall"] - self.unhurt["wall"])


@dataclass
class TreeRuns:
    label: str
    tree: str
    pairs: list[Pair] = field(default_factory=list)


def fmt_range(values: Sequence[float], digits: int = 1) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{mid:.{digits}f} (range {low:.{digits}f}-{high:.{digits}f})"


def describe_leg(result: dict[str, Any]) -> str:
    kills = Counter(k["function"] for k in result["kills"])
    killed = ", ".join(f"{n} {f}" for f, n in sorted(kills.items())) or "none"
    verdict = "every line exactly once" if result["exactly_once"] else "NOT EXACTLY ONCE"
    counted = result.get("counted_at", result["wall"])
    return (
        f"{result['wall']:6.1f} s (lines counted at {counted:5.1f} s)  {result['status']:<21} {verdict}: "
        f"results.jsonl {result['lines']} lines"
        f"{'' if result['lines_in_order'] else ' (out of order or missing)'}, IMG# rows {result['rows']}"
        f"{'' if result['rows_once'] else ' (not one per line)'}, "
        f"counts {'add up' if result['counted'] else 'WRONG'}; {dict(result['codes'])}; "
        f"killed {killed}; {result['replaced']} workers replaced"
    )


def report(runs: list[TreeRuns], args: argparse.Namespace, machine: dict[str, str]) -> None:
    print(f"\nmachine: {machine['cpu']}, {machine['cpus']} CPUs; load average (1/5/15 min)")
    print(f"  before {machine['load_before']}, after {machine['load_after']}")
    print(
        f"job: {args.images} lines, {args.workers} predict workers at the start (the runner may add some); "
        f"chaos: {args.kills} SIGKILLs of predict/finalize workers within {args.within:g} s of the upload"
    )
    for tree in runs:
        print(f"\n{tree.label}:")
        for i, pair in enumerate(tree.pairs, 1):
            print(f"  run {i} unhurt {describe_leg(pair.unhurt)}")
            print(f"  run {i} chaos  {describe_leg(pair.chaos)}")
            ratio = pair.chaos["wall"] / pair.unhurt["wall"]
            print(f"  run {i}: the kills cost the job {pair.cost:+.1f} s ({ratio:.2f}x)")
        unhurt = [p.unhurt["wall"] for p in tree.pairs]
        chaos = [p.chaos["wall"] for p in tree.pairs]
        cost = fmt_range([p.cost for p in tree.pairs])
        print(f"  unhurt {fmt_range(unhurt)} s; chaos {fmt_range(chaos)} s; cost {cost} s")
    broken = [
        f"{tree.label} run {i} {kind}"
        for tree in runs
        for i, pair in enumerate(tree.pairs, 1)
        for kind, result in (("unhurt", pair.unhurt), ("chaos", pair.chaos))
        if not result["exactly_once"]
    ]
    if broken:
        raise SystemExit(f"lines not there exactly once: {broken}")


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def main_parent(args: argparse.Namespace) -> None:
    lst = throughput()

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    args.workers = args.workers or os.cpu_count() or 1
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    machine = {"cpu": cpu_name(), "cpus": str(os.cpu_count()), "load_before": load}
    run_dir = lst.BENCH / "runs" / time.strftime("chaos-%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True)
    workload = lst.ensure_workload(args.samples, args.photos, args.seed, say)
    runs: list[TreeRuns] = []
    if args.before:
        tree, sha = lst.ensure_worktree(args.before)
        runs.append(TreeRuns(f"before ({args.before} {sha[:7]})", str(tree)))
    runs.append(TreeRuns("current (working tree)", str(ROOT)))
    files = lst.start_file_server(workload.folder)
    try:
        manifest = lst.write_manifest(run_dir / "chaos.txt", workload, args.images, files.url, None, 0)
        for run in range(1, args.repeat + 1):
            say(f"run {run} of {args.repeat}")
            for tree_runs in runs:
                results = []
                for kills in (0, args.kills):
                    name = f"{'before' if tree_runs.tree != str(ROOT) else 'current'}-{run}-{kills}"
                    spec = LegSpec(
                        label=tree_runs.label,
                        tree=tree_runs.tree,
                        model=str(args.model.resolve()),
                        manifest=str(manifest.path),
                        total=args.images,
                        workers=args.workers,
                        kills=kills,
                        within=args.within,
                        seed=args.seed + run,
                        log_dir=str(run_dir / f"logs-{name}"),
                        out=str(run_dir / f"{name}.json"),
                        timeout=args.timeout,
                    )
                    results.append(leg(spec, say))
                tree_runs.pairs.append(Pair(*results))
    finally:
        files.stop()
    machine["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    report(runs, args, machine)
    print(f"\nlogs and leg results: {run_dir}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser, add = throughput().workload_parser(__doc__, images=1500)
    add("--kills", type=int, default=24, help="workers killed in a chaos leg (default 24)")
    add("--within", type=float, default=90.0, help="seconds after the upload the kills are spread over")
    add("--seed", type=int, default=0, help="of the workload and the kills (default 0)")
    add("--workers", type=int, default=None, help="predict workers at the start (default: one per core)")
    add("--repeat", type=int, default=1, help="runs of the legs (default 1)")
    add("--before", metavar="REF", help="also run the legs on this git ref's code, before each current run")
    add("--timeout", type=float, default=1800.0, help="give up on a job after this many seconds")
    add("--leg", help=argparse.SUPPRESS)
    args: argparse.Namespace = parser.parse_args(argv)
    if args.images < 1 or args.kills < 1 or args.within <= 0 or args.repeat < 1:
        parser.error("--images, --kills and --repeat must be >= 1, --within > 0")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.leg:
        run_leg(LegSpec(**json.loads(args.leg)))
    else:
        main_parent(args)


if __name__ == "__main__":
    main()
