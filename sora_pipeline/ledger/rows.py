"""How the store reads and writes the ledger's tables: the entry view (request row + its current attempt), the
row → dataclass mappers, and the hot statements, built once with bind parameters (`b_*`) — building a statement
per call costs SQLAlchemy about three times as much CPU as executing it, and a day's run makes a dozen of these
calls per video."""

from __future__ import annotations

from sqlalchemy import and_, bindparam, select, update
from sqlalchemy.engine import Row

from sora_pipeline.coordination.schema import attempts, requests

from .model import AttemptRecord, LedgerEntry, RequestState

S = RequestState
_A = attempts.c
_R = requests.c
_ATTEMPT_COLS = [
    _A.state.label("attempt_state"), _A.owner.label("attempt_owner"), _A.request_id, _A.status_url,
    _A.response_url, _A.cancel_url, _A.submitted_at, _A.completed_at, _A.output_json, _A.artifacts_json,
    _A.error_type, _A.error_message, _A.retryable, _A.seconds_generated, _A.actual_cost,
]
_JOIN = requests.outerjoin(attempts, and_(_A.request_key == _R.request_key, _A.attempt == _R.attempt))
ENTRY_SELECT = select(*requests.c, *_ATTEMPT_COLS).select_from(_JOIN)
_KEY, _ATT = bindparam("b_key"), bindparam("b_attempt")
ENTRY_BY_KEY = ENTRY_SELECT.where(_R.request_key == _KEY)
ENTRY_BY_KEY_FOR_UPDATE = ENTRY_BY_KEY.with_for_update(of=requests)
CLAIM_CAS = (update(requests)
             .where(_R.request_key == _KEY, _R.state == bindparam("b_state"), _R.attempt == _ATT)
             .values(state=S.SUBMITTING.value, attempt=bindparam("b_new"), owner=bindparam("b_owner"),
                     claimed_at=bindparam("b_now"), updated_at=bindparam("b_now")))
INSERT_ATTEMPT = attempts.insert()
REQUEST_FOR_UPDATE = select(_R.state, _R.attempt).where(_R.request_key == _KEY).with_for_update()
ATTEMPT_FOR_UPDATE = select(attempts).where(_A.request_key == _KEY, _A.attempt == _ATT).with_for_update()
UPDATE_ATTEMPT = update(attempts).where(_A.request_key == _KEY, _A.attempt == _ATT)  # SET from the parameters
UPDATE_REQUEST_STATE = (update(requests).where(_R.request_key == _KEY, _R.attempt == _ATT)
                        .values(state=bindparam("b_state"), updated_at=bindparam("b_now")))
ARTIFACTS_FOR_UPDATE = (select(_A.artifacts_json).where(_A.request_key == _KEY, _A.attempt == _ATT)
                        .with_for_update())


def entry_from_row(row: Row) -> LedgerEntry:
    m = row._mapping
    return LedgerEntry(
        request_key=m["request_key"], item_id=m["item_id"], day=m["day"], endpoint_id=m["endpoint_id"],
        state=S(m["state"]), attempt=m["attempt"], spec=dict(m["spec_json"] or {}),
        estimated_cost=m["estimated_cost"], created_at=m["created_at"], updated_at=m["updated_at"],
        owner=m["owner"], claimed_at=m["claimed_at"], request_id=m["request_id"], status_url=m["status_url"],
        response_url=m["response_url"], cancel_url=m["cancel_url"], submitted_at=m["submitted_at"],
        completed_at=m["completed_at"], output=m["output_json"], artifacts=m["artifacts_json"],
        error_type=m["error_type"], error_message=m["error_message"], retryable=m["retryable"],
        seconds_generated=m["seconds_generated"], actual_cost=m["actual_cost"], attempt_owner=m["attempt_owner"],
        attempt_state=S(m["attempt_state"]) if m["attempt_state"] else None,
    )


def attempt_from_row(row: Row) -> AttemptRecord:
    m = row._mapping
    return AttemptRecord(
        request_key=m["request_key"], attempt=m["attempt"], state=S(m["state"]), owner=m["owner"],
        estimated_cost=m["estimated_cost"], request_id=m["request_id"], status_url=m["status_url"],
        response_url=m["response_url"], cancel_url=m["cancel_url"], submitted_at=m["submitted_at"],
        completed_at=m["completed_at"], output=m["output_json"], artifacts=m["artifacts_json"],
        error_type=m["error_type"], error_message=m["error_message"], retryable=m["retryable"],
        seconds_generated=m["seconds_generated"], actual_cost=m["actual_cost"], created_at=m["created_at"],
        updated_at=m["updated_at"],
    )
