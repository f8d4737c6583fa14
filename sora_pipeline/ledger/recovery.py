"""Recovering a day from the warehouse: a ledger that lost its file (deleted, replaced by an empty one, a new
SQLite path) must not make the next run pay again for what the day's `generations` table already records.

`recover_day(ledger, day, rows)` reads the table's rows (what every earlier run of the day wrote) and puts back each
request the ledger does not know — absent, or only planned and never claimed — with its recorded attempt:
completed ones with their stored result and archived video (the next run reuses them), ones still running at fal
(`pending` with a request id) as submitted (the next run resumes polling them), failed ones as failed (retried only
under the usual rules), unknown submits as unknown (never resubmitted automatically). Requests the ledger already
knows are left alone: the ledger is the record, the table only a copy of it."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select, update

from sora_pipeline.coordination.engine import write
from sora_pipeline.coordination.schema import attempts, requests, utcnow

from .model import RequestState

__all__ = ["recover_day"]
log = logging.getLogger("sora_pipeline.ledger")
S = RequestState
#: the table's status → the ledger state put back (rows without a request id only when `unknown`)
_STATES = {"completed": S.COMPLETED, "pending": S.SUBMITTED, "failed": S.FAILED, "unknown": S.UNKNOWN}
#: (status_url, response_url, cancel_url) of (endpoint id, request id), to resume polling it
HandleUrls = Callable[[str, str], tuple[str, str, str]]


def _urls_on(base_url: str) -> HandleUrls:
    from sora_pipeline.fal.protocol import QueueProtocol

    def urls(endpoint_id: str, request_id: str) -> tuple[str, str, str]:
        h = QueueProtocol(base_url=base_url, endpoint_id=endpoint_id, key=None).handle_for(request_id)
        return h.status_url, h.response_url, h.cancel_url

    return urls


def recover_day(ledger: Any, day: str, rows: Any, *, queue_base_url: str | None = None) -> int:
    """Put back the day's requests the ledger does not know from `rows` (the day's `generations` table: a pyarrow
    Table, a list of dicts, or None). A request put back as submitted gets its queue URLs on `queue_base_url` (the
    queue the run polls). Returns how many requests were recovered."""
    if rows is None:
        return 0
    urls_for = _urls_on(queue_base_url) if queue_base_url else None
    rows = rows.to_pylist() if hasattr(rows, "to_pylist") else list(rows)
    candidates = {r["request_key"]: r for r in rows if _recoverable(r)}
    if not candidates:
        return 0
    recovered = 0
    with write(ledger._engine) as conn:
        known = {r.request_key: (r.state, r.attempt) for r in conn.execute(
            select(requests.c.request_key, requests.c.state, requests.c.attempt)
            .where(requests.c.request_key.in_(sorted(candidates))))}
        for key, row in sorted(candidates.items()):
            state_attempt = known.get(key)
            if state_attempt is not None and state_attempt != (S.PLANNED.value, 0):
                continue  # the ledger knows this request: it is the record
            request_row, attempt_row = _rows(day, row, urls_for)
            if state_attempt is None:
                conn.execute(requests.insert().values(**request_row))
            else:
                conn.execute(update(requests).where(requests.c.request_key == key).values(
                    state=request_row["state"], attempt=request_row["attempt"], updated_at=request_row["updated_at"]))
            conn.execute(attempts.delete().where(attempts.c.request_key == key,
                                                 attempts.c.attempt == attempt_row["attempt"]))
            conn.execute(attempts.insert().values(**attempt_row))
            recovered += 1
    if recovered:
        log.warning("ledger %r: %d request(s) of %s recovered from the warehouse's generations table", ledger,
                    recovered, day)
    return recovered


def _recoverable(row: Mapping[str, Any]) -> bool:
    status, attempt = row.get("status"), row.get("attempt")
    if not row.get("request_key") or status not in _STATES or not attempt:
        return False
    return bool(row.get("request_id")) or status == "unknown"


def _rows(day: str, r: Mapping[str, Any], urls_for: HandleUrls | None) -> tuple[dict, dict]:
    now = utcnow()
    state = _STATES[r["status"]]
    attempt = int(r["attempt"])
    backend = r.get("backend") or "fal"
    spec = {"item_id": r["item_id"], "endpoint_id": r.get("endpoint_id"), "resolution": r.get("resolution"),
            "aspect_ratio": r.get("aspect_ratio"), "duration": r.get("requested_duration"), "backend": backend,
            "used_openai_key": bool(r.get("used_openai_key")), "recovered_from": "warehouse generations"}
    request_row = dict(request_key=r["request_key"], item_id=r["item_id"], day=day,
                       endpoint_id=r.get("endpoint_id") or "", state=state.value, attempt=attempt, spec_json=spec,
                       estimated_cost=float(r.get("estimated_cost") or 0.0), created_at=now, updated_at=now,
                       owner=None, claimed_at=None, backend=backend)
    status_url = response_url = cancel_url = None
    if r.get("request_id") and urls_for is not None and r.get("endpoint_id"):
        status_url, response_url, cancel_url = urls_for(r["endpoint_id"], r["request_id"])
    completed = state == S.COMPLETED
    attempt_row = dict(
        request_key=r["request_key"], attempt=attempt, state=state.value, owner="recovered",
        estimated_cost=r.get("estimated_cost"), request_id=r.get("request_id"), status_url=status_url,
        response_url=response_url, cancel_url=cancel_url, submitted_at=_aware(r.get("submitted_at")),
        completed_at=_aware(r.get("completed_at")) if completed else None,
        output_json=_output(r) if completed else None, artifacts_json=_artifacts(r) if completed else None,
        error_type=None if completed else r.get("error_type"),
        error_message=None if completed else r.get("error_message"),
        retryable=None if completed else r.get("retryable"), seconds_generated=r.get("seconds_generated"),
        actual_cost=r.get("priced_cost"), created_at=now, updated_at=now)
    return request_row, attempt_row


def _output(r: Mapping[str, Any]) -> dict[str, Any]:
    """The endpoint's answer as the table keeps it: the `video` object, the video id, the images and scalars."""
    document: dict[str, Any] = dict(_json(r.get("outputs_json")) or {})
    document["video"] = _json(r.get("api_json")) or {"url": r.get("video_url")}
    for name, value in (("video_id", r.get("video_id")), ("seed", r.get("seed"))):
        if value is not None:
            document[name] = value
    for name in ("thumbnail", "spritesheet"):
        if r.get(f"{name}_url"):
            document[name] = {"url": r[f"{name}_url"]}
    return document


def _artifacts(r: Mapping[str, Any]) -> dict[str, Any]:
    """The archived video's facts (so the next run reuses the copy instead of downloading it again)."""
    started = _aware(r.get("started_at"))
    out = {"archive_uri": r.get("archive_uri"), "sha256": r.get("sha256"), "file_size": r.get("file_size"),
           "content_type": r.get("content_type"), "probe": _json(r.get("probe_json")),
           "started_at": started.isoformat() if started else None, "billed_units": r.get("billed_units"),
           "unit_price_usd": r.get("unit_price_usd"), "recovered_from": "warehouse generations"}
    return {k: v for k, v in out.items() if v is not None or k == "billed_units"}


def _json(text: str | None) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def _aware(value: datetime | None) -> datetime | None:
    if value is None or not isinstance(value, datetime):
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)

