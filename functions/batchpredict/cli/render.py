"""How the CLI shows jobs, result lines and predictions: one ``--output json|table|text``.

* ``json``: one JSON object a line (JSON Lines), for programs and ``jq``;
* ``table``: aligned columns with a header, for people;
* ``text``: tab-separated fields, one record a line, no header (as the AWS CLI's text
  output), for ``cut``, ``awk`` and ``grep``.

Each function returns the whole text, ending with a newline unless there is nothing to show.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from batchpredict.records import SUCCEEDED, ResultRecord

OUTPUTS = ("json", "table", "text")
OUTPUT_HELP = (
    "json: one JSON object a line; table: aligned columns for people; "
    "text: tab-separated fields, no header (for cut/awk)."
)


def _lines(rows: Iterable[str]) -> str:
    return "".join(row + "\n" for row in rows)


def _tsv(values: Iterable[Any]) -> str:
    return "\t".join("" if v is None else str(v).replace("\t", " ").replace("\n", " ") for v in values)


def _json_lines(objects: Iterable[Any]) -> str:
    return _lines(json.dumps(o) for o in objects)


# --- jobs ------------------------------------------------------------------------------------


def _done(job: Any) -> str:
    return f"{job.succeeded + job.failed}/{job.total if job.split_done else '?'}"


JOB_COLUMNS = ("job", "status", "done", "failed", "created", "name", "manifest")


def _job_row(job: Any) -> tuple[Any, ...]:
    return (
        job.job_id,
        job.status.value,
        _done(job),
        job.failed,
        job.created_at,
        job.name or "-",
        job.manifest_uri,
    )


def jobs_view(jobs: Sequence[Any], output: str) -> str:
    """``batchpredict jobs``: one job a line."""
    if output == "json":
        return _json_lines(job.as_dict() for job in jobs)
    if output == "text":
        return _lines(_tsv(_job_row(job)) for job in jobs)
    rows = [JOB_COLUMNS, *(tuple(str(v) for v in _job_row(job)) for job in jobs)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(JOB_COLUMNS) - 1)]
    return _lines(
        "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]])
        for row in rows
    )


def _options(job: Any) -> list[tuple[str, Any]]:
    return [
        ("top-k", job.top_k),
        ("max-failures", job.max_failures),
        ("notify", ",".join(job.notify)),
        ("fidelity", job.fidelity),
        ("host-rps", job.host_rps),
        ("robots", job.robots),
    ]


def job_view(job: Any, output: str) -> str:
    """``batchpredict status``: the JOB record; as a table, one field a line."""
    if output != "table":
        return jobs_view([job], output)
    fields = [
        ("job", job.job_id),
        ("name", job.name),
        ("tags", ",".join(f"{k}={v}" for k, v in job.tags.items())),
        ("status", job.status.value),
        ("manifest", job.manifest_uri),
        ("lines", job.total if job.split_done else f"{job.position.get('index', 0)}+ (splitting)"),
        ("succeeded", job.succeeded),
        ("failed", job.failed),
        ("deferred", _deferred(job)),
        ("chunks", f"{job.chunks_done}/{job.chunks_total}"),
        ("model", job.model),
        ("created", job.created_at),
        ("completed", job.completed_at),
        ("results", job.results_uri),
        ("options", " ".join(f"{k}={v}" for k, v in _options(job) if v)),
        ("stopping", job.stop_detail if job.status.value == "CANCELLING" else None),
        ("error", job.error),
    ]
    return _lines(f"{name:>10}  {value}" for name, value in fields if value not in (None, ""))


def _deferred(job: Any) -> str | None:
    """Lines waiting for their host's turn (deferral.py), while the job runs; None: none."""
    waiting = max(int(getattr(job, "deferred_lines", 0) or 0), 0)
    if not waiting or job.status.value not in ("RUNNING", "CANCELLING"):
        return None
    return f"{waiting} (waiting for their hosts' turn)"


def progress_line(progress: Any) -> str:
    """``submit --wait``, ``watch``: a bar, done/total, failures, rate, ETA and status, drawn
    over itself (it starts with a carriage return)."""
    job = progress.job
    total = job.total if job.split_done else None
    done = progress.done
    width = 30
    filled = int(width * done / total) if total else 0
    bar = "#" * filled + "." * (width - filled)
    eta = f"{progress.eta_seconds:4.0f}s" if progress.eta_seconds is not None else "   ?"
    count = f"{done}/{total if total is not None else '?'}"
    rate = f"{progress.rate:5.1f} images/s"
    waiting = _deferred(job)
    deferred = f"  deferred {waiting.split()[0]}" if waiting else ""
    return f"\r[{bar}] {count}  failed {job.failed}{deferred}  {rate}  ETA {eta}  {job.status.value:<22}"


# --- result lines ----------------------------------------------------------------------------


def _result_row(record: ResultRecord) -> tuple[Any, ...]:
    """index, status, top-1 label or error code, top-1 probability, source."""
    source = record.id or record.url or ""
    if record.status == SUCCEEDED and record.predictions:
        top = record.predictions[0]
        return (record.index, record.status, top.label, top.probability, source)
    return (record.index, record.status, record.error.code if record.error else "", None, source)


def results_table(records: Iterable[ResultRecord]) -> str:
    lines = [f"{'#':>5}  {'status':<9} {'top-1':<28} {'p':>6}  source"]
    for index, status, what, probability, source in map(_result_row, records):
        if probability is not None:
            lines.append(
                f"{index:>5}  {'ok':<9} {what.split(',')[0][:28]:<28} {probability:6.1%}  {source[-60:]}"
            )
        else:
            lines.append(f"{index:>5}  {status:<9} {what:<28} {'':>6}  {source[-60:]}")
    return _lines(lines)


def results_view(records: Sequence[ResultRecord], output: str) -> str:
    """``batchpredict results``: one manifest line a line (``csv``: see ``client.to_csv``)."""
    if output == "json":
        return _json_lines(r.to_json() for r in records)
    if output == "text":
        return _lines(_tsv(_result_row(r)) for r in records)
    if output == "csv":
        from batchpredict.cli.client import to_csv

        return to_csv(records)
    return results_table(records)


# --- one-off predictions ---------------------------------------------------------------------


def prediction_line(p: Any) -> str:
    """``1. espresso   95.10%  (n07920052, class 967)``."""
    return f"{p.rank}. {p.label.split(',')[0]:<32} {p.probability:7.2%}  ({p.wnid}, class {p.class_index})"


def predictions_view(sources: Sequence[str], outcomes: Sequence[Any], output: str) -> str:
    """``batchpredict predict``: per source, its top-k or its error. ``text``: a line per
    prediction (source, rank, probability, wnid, class index, label) or per error (source,
    ``error``, code, message)."""
    pairs = list(zip(sources, outcomes, strict=True))
    if output == "json":
        return _json_lines(
            {"source": s, "error": o.error.as_dict()}
            if o.error is not None
            else {"source": s, "predictions": [p.as_dict() for p in o.predictions]}
            for s, o in pairs
        )
    if output == "text":
        rows: list[str] = []
        for s, o in pairs:
            if o.error is not None:
                rows.append(_tsv((s, "error", o.error.code.value, o.error.message)))
            else:
                rows.extend(
                    _tsv((s, p.rank, p.probability, p.wnid, p.class_index, p.label)) for p in o.predictions
                )
        return _lines(rows)
    lines: list[str] = []
    for source, outcome in pairs:
        lines.append(source)
        if outcome.error is not None:
            lines.append(f"  error {outcome.error.code.value}: {outcome.error.message}")
            continue
        lines.extend(f"  {prediction_line(p)}" for p in outcome.predictions)
    return _lines(lines)
