"""EventBridge adapter: one "Batchpredict Job State Change" event per final state of a job.

Exactly once, also under redelivery: the update that makes a job final also sets
``event_due`` on its JOB record (jobs.py); ``announce`` takes that mark away with a
conditional update before it puts the event, so of two deliveries only one puts it. A
failed PutEvents gives the mark back and raises, so the redelivered message puts it. (A
process that dies between the claim and PutEvents loses the event: the one gap left.)
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from batchpredict.jobs import Job, JobStatus, JobStore
from batchpredict.observability import logger

if TYPE_CHECKING:
    from mypy_boto3_events import EventBridgeClient

SOURCE = "batchpredict"
DETAIL_TYPE = "Batchpredict Job State Change"


class EventPutError(RuntimeError):
    """EventBridge refused the event (a FailedEntryCount, or an error from the call)."""


class JobEvents:
    """``bus``: the event bus name or ARN."""

    def __init__(self, client: EventBridgeClient, bus: str) -> None:
        self.client = client
        self.bus = bus

    def put(self, detail: dict[str, Any]) -> None:
        response = self.client.put_events(
            Entries=[
                {
                    "Source": SOURCE,
                    "DetailType": DETAIL_TYPE,
                    "Detail": json.dumps(detail, separators=(",", ":")),
                    "EventBusName": self.bus,
                    "Resources": [],
                }
            ]
        )
        if response.get("FailedEntryCount"):
            entry = response["Entries"][0]
            why = f"{entry.get('ErrorCode')} {entry.get('ErrorMessage')}"
            raise EventPutError(f"EventBridge refused the event: {why}")


def event_detail(job: Job, summary: dict[str, Any], summary_uri: str | None) -> dict[str, Any]:
    """The event's ``detail``: who, what state, counts, errors, where the results are, cost."""
    return {
        "job_id": job.job_id,
        "name": job.name,
        "tags": job.tags,
        "status": job.status.value,
        "reason": job.error,
        "manifest_uri": job.manifest_uri,
        "counts": {
            "total": summary.get("total", job.total),
            "succeeded": summary.get("succeeded", job.succeeded),
            "failed": summary.get("failed", job.failed),
        },
        "errors_by_code": summary.get("errors_by_code", {}),
        "results_uri": job.results_uri,
        "summary_uri": summary_uri,
        "model": summary.get("model", job.model),
        "compute": summary.get("compute"),
        "started_at": job.created_at,
        "ended_at": job.completed_at,
        # Rules match on it: the template's email rule sends only jobs that asked (notify=email).
        "notify": job.notify,
    }


def announce(
    jobs: JobStore, events: JobEvents | None, job: Job, summary: dict[str, Any], summary_uri: str | None
) -> bool:
    """Put the event of ``job``'s final state if it is still due; True if this call put it."""
    if events is None or job.event_due != job.status.value or not jobs.claim_event(job.job_id, job.status):
        return False
    try:
        events.put(event_detail(job, summary, summary_uri))
    except Exception:
        jobs.release_event(job.job_id, JobStatus(job.status))
        raise
    logger.info("job state change event put", extra={"job_id": job.job_id, "status": job.status.value})
    return True
