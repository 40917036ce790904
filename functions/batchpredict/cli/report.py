"""report.html: one self-contained page per job (thumbnails inlined, no external assets)."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchpredict.errors import PredictionError
from batchpredict.fetch import Fetcher, FetchLimits, parse_networks
from batchpredict.images import load_rgb
from batchpredict.records import SUCCEEDED, ResultRecord

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

THUMBNAIL_PX = 160
Thumbnailer = Callable[[str], bytes | None]

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:20px;margin:0 0 4px} .muted{color:#777}
.summary{display:flex;gap:24px;margin:12px 0 20px;flex-wrap:wrap}
.summary div{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px 14px}
.summary b{display:block;font-size:18px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:12px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px;display:flex;gap:10px}
.card.failed{border-color:#e0a0a0;background:#fff6f6}
.thumb{width:160px;height:160px;object-fit:cover;border-radius:4px;background:#eee;flex:none}
.noimg{width:160px;height:160px;display:flex;align-items:center;justify-content:center;background:#eee;
border-radius:4px;color:#999;flex:none}
.body{min-width:0;flex:1} .url{font-size:11px;color:#777;word-break:break-all}
.bar{display:flex;align-items:center;gap:6px;font-size:12px;margin:3px 0}
.bar span.name{flex:1;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.bar .track{width:80px;height:8px;background:#eee;border-radius:4px;flex:none}
.bar .fill{height:8px;background:#3b7dd8;border-radius:4px}
.code{font-family:monospace;color:#b00020}
"""


def thumbnail_data_uri(data: bytes) -> str | None:
    try:
        image = load_rgb(data, draft_to=THUMBNAIL_PX)
    except PredictionError:
        return None
    image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode()


def _card(record: ResultRecord, thumb: str | None) -> str:
    e = html.escape
    title = e(record.id or f"line {record.index}")
    image = f'<img class="thumb" src="{thumb}" alt="">' if thumb else '<div class="noimg">no image</div>'
    if record.error is None:
        rows = "".join(
            f'<div class="bar"><span class="name">{e(p.label.split(",")[0])}</span>'
            f'<span class="track"><span class="fill" '
            f'style="width:{p.probability * 100:.1f}%;display:block"></span></span>'
            f"<span>{p.probability:.1%}</span></div>"
            for p in record.predictions
        )
        css = "card"
    else:
        rows = f'<div class="code">{e(record.error.code)}</div><div>{e(record.error.message)}</div>'
        css = "card failed"
    return (
        f'<div class="{css}">{image}<div class="body"><b>#{record.index} {title}</b>'
        f'<div class="url">{e(record.url or "")}</div>{rows}</div></div>'
    )


def render_report(
    summary: dict[str, Any], records: Iterable[ResultRecord], thumbnail: Thumbnailer, max_images: int = 500
) -> str:
    """The page; ``thumbnail(url)`` returns image bytes (or None) for the first ``max_images`` lines."""
    e = html.escape
    cards = []
    shown = 0
    for record in records:
        thumb = None
        if shown < max_images and record.url and record.status == SUCCEEDED:
            data = thumbnail(record.url)
            thumb = thumbnail_data_uri(data) if data else None
        if shown < max_images:
            cards.append(_card(record, thumb))
        shown += 1
    errors = "".join(
        f"<li><span class=code>{e(code)}</span>: {count}</li>"
        for code, count in (summary.get("errors_by_code") or {}).items()
    )
    stats = [
        ("status", summary.get("status")),
        ("lines", summary.get("total")),
        ("succeeded", summary.get("succeeded")),
        ("failed", summary.get("failed")),
        ("images/s", summary.get("images_per_second")),
        ("model", summary.get("model")),
    ]
    boxes = "".join(f"<div>{e(name)}<b>{e(str(value))}</b></div>" for name, value in stats)
    more = (
        f'<p class="muted">{shown - max_images} more lines in results.jsonl</p>' if shown > max_images else ""
    )
    job_id = e(str(summary.get("job_id")))
    when = f"{e(str(summary.get('started_at', '')))} → {e(str(summary.get('ended_at', '')))}"
    failures = f"<h2>Failures by code</h2><ul>{errors}</ul>" if errors else ""
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>batchpredict {job_id}</title>"
        f"<style>{_STYLE}</style></head><body><h1>Job {job_id}</h1>"
        f"<div class='muted'>{e(str(summary.get('manifest_uri', '')))} · {when}</div>"
        f"<div class='summary'>{boxes}</div>{failures}"
        f"<div class='grid'>{''.join(cards)}</div>{more}</body></html>"
    )


def fetch_thumbnails(allowed: tuple[str, ...], s3_client_factory: Callable[[], S3Client]) -> Thumbnailer:
    """A Thumbnailer that fetches behind the address guard (``allowed``: the networks it may
    reach); a URL that cannot be fetched gets no thumbnail."""
    fetcher = Fetcher(
        FetchLimits(allowed_networks=parse_networks(",".join(allowed))), s3_client_factory=s3_client_factory
    )

    def fetch(url: str) -> bytes | None:
        try:
            return fetcher.fetch(url).data
        except PredictionError:
            return None

    return fetch


def write_report(
    summary: dict[str, Any],
    records: Iterable[ResultRecord],
    output: Path,
    allowed: tuple[str, ...],
    s3_client_factory: Callable[[], S3Client],
) -> None:
    output.write_text(
        render_report(summary, records, fetch_thumbnails(allowed, s3_client_factory)), encoding="utf-8"
    )
