"""A submit refused for the key (401/403 before fal created a request) bills nothing: the run stops with one line
about the key, and once the key is fixed the items are submitted, whatever `max_attempts` says."""

from __future__ import annotations

from collections import Counter

import dagster as dg

from sora_pipeline.ledger import Ledger
from tests.support.fixtures import DAY, make_project, materialize_day, resources

RIGHT, WRONG = "right-key-id:right-secret-0123456789", "wrong-key-id:wrong-secret-9876543210"


def states(project: dict) -> Counter:
    with Ledger.open(project["ledger_url"]) as ledger:
        return Counter(e.state.value for e in ledger.entries_for_day(DAY))


def failure_message(result) -> str:
    (event,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    return event.event_specific_data.error.message


def test_a_refused_key_stops_the_run_and_leaves_the_items_resubmittable(tmp_path, make_simulator):
    sim = make_simulator(accepted_keys=[RIGHT])
    project = make_project(tmp_path)
    once = {"max_attempts": 1}
    for _ in range(2):  # twice: a refused attempt never counts against max_attempts
        result = materialize_day(resources(sim.base_url, project, fal_key=WRONG, submit_concurrency=1),
                                 run_config=once, raise_on_error=False)
        assert not result.success
        message = failure_message(result)
        assert "fal refused the key" in message and "FAL_KEY" in message and "\n" not in message.strip()
        assert "wrong-secret" not in message
        assert sim.stats()["submits"] == 0
        assert states(project) == Counter({"planned": 4})
    result = materialize_day(resources(sim.base_url, project, fal_key=RIGHT), run_config=once)
    assert result.success
    assert states(project) == Counter({"completed": 4}) and sim.stats()["submits"] == 4
    with Ledger.open(project["ledger_url"]) as ledger:
        assert ledger.spent(DAY) == sum(e.estimated_cost for e in ledger.entries_for_day(DAY))
