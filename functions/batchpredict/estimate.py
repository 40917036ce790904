"""What a job will cost and take before it runs (``submit --dry-run``): the manifest read locally
by the splitter's own code, and the per-line figures of the stack's recent jobs of the same model
and fidelity (or the shipped defaults below) priced by ``costs.compute_summary``.

The model of a job's time: predict's billed time per line (an invocation's time shared out over
the chunks it counts, as ``costs.ComputeMeter`` charges it) over the predict invocations that
run at once, ``min(concurrency, chunks / work batch size)``, plus an overhead per job (split, the
first receive, finalize, measured as what a job's wall time leaves besides predict's share). A
line the splitter refuses is counted but costs no predict time.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from batchpredict.costs import PRICES, Prices, compute_summary
from batchpredict.deadlines import epoch
from batchpredict.fidelity import DEFAULT_FIDELITY
from batchpredict.jobs import Job
from batchpredict.manifest import ByteStream, ManifestError, detect_format, iter_manifest
from batchpredict.split import SplitSettings, work_item

EXACT = DEFAULT_FIDELITY.value  # the fidelity of a job that names none
DEFAULT_MODEL = "efficientnet-lite0:1"  # the default bundle's model id (model.json name:version)
HISTORY_JOBS = 5  # the newest finished jobs of the same model and fidelity an estimate averages
EXAMPLES_PER_CODE = 3  # failing lines shown for each error code


@dataclass(frozen=True)
class StackSettings:
    """The stack settings a job's time and cost follow: the template's parameters, defaults from
    infrastructure/template.yaml (tests/unit/test_estimate.py compares)."""

    predict_concurrency: int = 20  # PredictMaxConcurrency: predict invocations at once
    work_batch_size: int = 8  # WorkBatchSize: chunks per predict invocation
    chunk_size: int = 16  # ChunkSize: lines per chunk
    predict_memory_mb: int = 3538  # PredictMemorySize: what a GB-s is billed on

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, str]) -> StackSettings:
        """From a deployed stack's CloudFormation parameters; the template's default for any not given."""
        values = {f: int(parameters[p]) for f, p in TEMPLATE_PARAMETERS.items() if parameters.get(p)}
        return cls(**values)


# StackSettings' fields by the template parameter each one is.
TEMPLATE_PARAMETERS = {
    "predict_concurrency": "PredictMaxConcurrency",
    "work_batch_size": "WorkBatchSize",
    "chunk_size": "ChunkSize",
    "predict_memory_mb": "PredictMemorySize",
}


@dataclass(frozen=True)
class PerLine:
    """What one manifest line costs a job, and what a job costs besides its lines."""

    billed_ms: float  # predict's billed time per line
    invocations: float  # predict invocations per line
    write_units: float  # DynamoDB write units per line
    overhead_seconds: float  # a job's wall time besides predict's share
    source: str  # where the figures come from, for the user


# Measured on the local stack (its REPORT accounting, predict workers on CPU slots: cpu_slots.py),
# on benchmarks/local_stack_throughput.py's 300 web-size JPEGs: the first job on a fresh stack
# (the case the defaults serve: no job yet; its workers' cold starts included), the medians
# ("defaults:" line) of two runs of
#     python benchmarks/estimate_accuracy.py --images 600 --repeat 3
# billed_ms 33.76 and 32.61, invocations 0.006667 and 0.008333, write_units 1.747 and 1.738,
# overhead_seconds 2.175 (the run at the dry run's own local concurrency), AMD EPYC (Zen 4), 2
# vCPUs, load 0.2-2.3, 2026-12-04. Re-measure when predict's accounting or engine changes. A
# fidelity with no figures of its own uses exact's, and says so.
DEFAULTS: dict[tuple[str, str], PerLine] = {
    (DEFAULT_MODEL, EXACT): PerLine(
        billed_ms=33.0,
        invocations=0.0075,
        write_units=1.74,
        overhead_seconds=2.2,
        source="shipped defaults (benchmarks/estimate_accuracy.py, local stack)",
    ),
}


@dataclass(frozen=True)
class FailingLines:
    count: int
    examples: tuple[str, ...]  # the first few lines' messages ("line N: ...", as the split writes them)


@dataclass(frozen=True)
class ManifestScan:
    """A manifest as the splitter would see it: its lines and those that would fail at split."""

    lines: int = 0
    failing: dict[str, FailingLines] = field(default_factory=dict)  # error code -> lines
    error: str | None = None  # the manifest cannot be read as a whole: the job would fail

    @property
    def failing_lines(self) -> int:
        return sum(f.count for f in self.failing.values())

    @property
    def predicted_lines(self) -> int:
        return self.lines - self.failing_lines


SPLIT_SETTINGS = SplitSettings()  # the caps the template's split runs with (it sets none of them)


def scan_manifest(stream: ByteStream, key: str, settings: SplitSettings = SPLIT_SETTINGS) -> ManifestScan:
    """Read ``stream`` (a manifest named ``key``) with the splitter's parser, caps and line checks
    (``split.work_item``): what the job's split would make of it, without uploading it."""
    counts: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}
    lines = 0
    try:
        fmt, gzipped = detect_format(key)
        items = iter_manifest(
            stream,
            fmt,
            gzipped,
            max_lines=settings.max_manifest_lines,
            max_physical_lines=settings.max_physical_lines,
            max_bytes=settings.max_manifest_bytes,
        )
        for item, _ in items:
            lines += 1
            error = work_item(item).error
            if error is not None:
                counts[error["code"]] += 1
                shown = examples.setdefault(error["code"], [])
                if len(shown) < EXAMPLES_PER_CODE:
                    shown.append(error["message"])  # the splitter's, which names the line
    except ManifestError as exc:
        return ManifestScan(lines, error=str(exc))
    failing = {code: FailingLines(n, tuple(examples[code])) for code, n in sorted(counts.items())}
    return ManifestScan(lines, failing)


def job_fidelity(job: Job) -> str:
    """A job's fidelity: ``exact`` for a job that records none (older jobs, or no option)."""
    return job.fidelity or EXACT


def _parallel(settings: StackSettings, chunks: int) -> int:
    """Predict invocations at once: the stack's concurrency, or fewer when the job has fewer batches."""
    return max(1, min(settings.predict_concurrency, math.ceil(chunks / settings.work_batch_size)))


def from_jobs(jobs: Iterable[Job], settings: StackSettings) -> PerLine | None:
    """Per-line figures from finished jobs (newest first), the newest HISTORY_JOBS that were
    measured; None when none was. The overhead is the median over the jobs of what each one's
    wall time leaves besides its predict time at this stack's concurrency."""
    measured = [j for j in jobs if j.compute_ms > 0 and j.total > 0 and j.completed_at and j.created_at]
    used = measured[:HISTORY_JOBS]
    if not used:
        return None
    lines = sum(j.total for j in used)
    overheads = []
    for j in used:
        wall = epoch(j.completed_at or "") - epoch(j.created_at)
        overheads.append(max(0.0, wall - j.compute_ms / 1000 / _parallel(settings, j.chunks_total)))
    names = ", ".join(j.job_id for j in used)
    return PerLine(
        billed_ms=sum(j.compute_ms for j in used) / lines,
        invocations=sum(j.invocations for j in used) / lines,
        write_units=sum(j.write_units for j in used) / lines,
        overhead_seconds=statistics.median(overheads),
        source=f"the stack's {len(used)} recent job(s) of this model and fidelity ({names})",
    )


def defaults_for(model: str, fidelity: str) -> PerLine:
    """The shipped figures of (model, fidelity); of the nearest measured pair otherwise, named."""
    if (model, fidelity) in DEFAULTS:
        return DEFAULTS[model, fidelity]
    nearest = (model, EXACT) if (model, EXACT) in DEFAULTS else (DEFAULT_MODEL, EXACT)
    found = DEFAULTS[nearest]
    return PerLine(
        **{k: v for k, v in vars(found).items() if k != "source"},
        source=f"{found.source}, of {nearest[0]} {nearest[1]}: none measured for {model} {fidelity}",
    )


@dataclass(frozen=True)
class Estimate:
    scan: ManifestScan
    model: str
    fidelity: str
    settings: StackSettings
    per_line: PerLine
    chunks: int
    parallel_invocations: int
    wall_seconds: float
    compute: dict[str, Any]  # as _summary.json's ``compute`` (costs.compute_summary)

    def as_dict(self) -> dict[str, Any]:
        scan = self.scan
        return {
            "lines": scan.lines,
            "failing_lines": {
                code: {"count": f.count, "examples": list(f.examples)} for code, f in scan.failing.items()
            },
            "manifest_error": scan.error,
            "model": self.model,
            "fidelity": self.fidelity,
            "settings": vars(self.settings),
            "per_line": vars(self.per_line),
            "chunks": self.chunks,
            "parallel_invocations": self.parallel_invocations,
            "wall_seconds": round(self.wall_seconds, 1),
            "compute": self.compute,
        }

    def text(self) -> str:
        """The dry run as ``submit --dry-run`` prints it."""
        scan, per, s = self.scan, self.per_line, self.settings
        out = [
            f"lines: {scan.lines:,} ({scan.predicted_lines:,} to predict, {scan.failing_lines:,} would fail)"
        ]
        for code, failing in scan.failing.items():
            out.append(f"  {code}: {failing.count:,}")
            out += [f"    {example}" for example in failing.examples]
        if scan.error:
            return "\n".join([*out, f"the job would FAIL: {scan.error}"]) + "\n"
        if not scan.lines:
            return "\n".join([*out, "no line: the job would end COMPLETED at once"]) + "\n"
        compute, usd = self.compute, self.compute["estimated_usd"]
        costs = ", ".join(f"{name} {value:.4g}" for name, value in usd.items() if name != "total")
        per_million = compute["estimated_usd_per_million_images"]
        out += [
            f"model {self.model}, fidelity {self.fidelity}; per-line figures from {per.source}:",
            f"  {per.billed_ms:.1f} billed ms, {per.invocations:.4f} invocations and {per.write_units:.2f}"
            f" write units a line; {per.overhead_seconds:.1f} s a job besides predict",
            f"estimate at predict concurrency {s.predict_concurrency} ({self.chunks:,} chunks of"
            f" {s.chunk_size}, {s.work_batch_size} an invocation: {self.parallel_invocations} at once;"
            f" {s.predict_memory_mb} MB):",
            f"  GB-s {compute['predict_gb_seconds']:,} ({compute['gb_seconds_per_image']} a line)",
            f"  wall time {_duration(self.wall_seconds)}",
            f"  $ {usd['total']:.4g} ({costs}); $ {per_million} per million lines",
        ]
        return "\n".join(out) + "\n"


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return (
        f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {rest:02d} s" if minutes else f"{rest} s"
    )


def estimate(
    scan: ManifestScan,
    per_line: PerLine,
    settings: StackSettings,
    model: str = DEFAULT_MODEL,
    fidelity: str = EXACT,
    prices: Prices = PRICES,
) -> Estimate:
    """The job's GB-s, $ per component and wall time, from ``per_line`` figures: the predicted
    lines' usage, priced by the same arithmetic as _summary.json's ``compute``."""
    chunks = math.ceil(scan.lines / settings.chunk_size)
    predicted = scan.predicted_lines
    billed_ms = predicted * per_line.billed_ms
    counters = {
        "compute_ms": round(billed_ms),
        "compute_mb_ms": round(billed_ms * settings.predict_memory_mb),
        "invocations": math.ceil(predicted * per_line.invocations),
        "write_units": math.ceil(scan.lines * per_line.write_units),
    }
    parallel = _parallel(settings, chunks)
    wall = per_line.overhead_seconds + billed_ms / 1000 / parallel if scan.lines else 0.0
    return Estimate(
        scan,
        model,
        fidelity,
        settings,
        per_line,
        chunks,
        parallel,
        wall,
        compute_summary(scan.lines, chunks, counters, prices),
    )


def per_line_for(history: Sequence[Job], model: str, fidelity: str, settings: StackSettings) -> PerLine:
    """The figures an estimate uses: the recent jobs of ``model`` at ``fidelity``, else the defaults."""
    same = [j for j in history if j.model == model and job_fidelity(j) == fidelity]
    return from_jobs(same, settings) or defaults_for(model, fidelity)
