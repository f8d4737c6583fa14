"""Endpoints fal no longer serves, over HTTP against the simulator's model registry (`GET /v1/models`): a retired
endpoint's rows are rejected before any spend (the day materializes, 0 submitted, one line naming the endpoint and
what fal answered); a deprecated one runs with a warning in the day's metadata; an unreachable or failing registry
lets the day proceed and says so."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

from tests.support.fixtures import DAY, catalog_rows, make_project, materialize_day, resources
from sora_pipeline.generation.registry_check import ERROR_TYPE, check_endpoint
from sora_pipeline.warehouse.tables import read_day_partition

SORA_PRO = "fal-ai/sora-2/image-to-video/pro"
KLING = "fal-ai/kling-video/v2.1/standard/image-to-video"


def generations_metadata(result) -> dict:
    mats = [e for e in result.get_asset_materialization_events() if e.asset_key.path[-1] == "generations"]
    return {k: getattr(v, "value", v) for k, v in mats[0].materialization.metadata.items()}


def test_a_retired_endpoint_s_rows_are_rejected_before_any_spend(tmp_path, make_simulator):
    sim = make_simulator(retired_endpoints=(SORA_PRO,))
    project = make_project(tmp_path, rows=catalog_rows(n=3))
    result = materialize_day(resources(sim.base_url, project, endpoint_id=SORA_PRO))
    assert result.success
    assert sim.stats()["submits"] == 0
    meta = generations_metadata(result)
    assert meta["submitted"] == 0 and meta["endpoint_status"] == "absent"
    failed = read_day_partition(project["warehouse_uri"], "failed_generations", DAY).to_pylist()
    assert len(failed) == 3 and {f["error_type"] for f in failed} == {ERROR_TYPE}
    line = failed[0]["reason"]
    assert SORA_PRO in line and "does not list it" in line and "\n" not in line
    assert all(f["request_key"] is None for f in failed)
    gens = read_day_partition(project["warehouse_uri"], "generations", DAY).to_pylist()
    assert len(gens) == 3 and all(g["decision"] == "rejected" and g["estimated_cost"] == 0.0 for g in gens)


def test_a_deprecated_endpoint_runs_with_a_warning_in_the_day_s_metadata(tmp_path, make_simulator):
    sim = make_simulator(deprecated_endpoints=(KLING,))
    project = make_project(tmp_path, rows=catalog_rows(n=2, duration=5, resolution=None, aspect_ratio=None))
    result = materialize_day(resources(sim.base_url, project, endpoint_id=KLING))
    assert result.success and sim.stats()["submits"] == 2
    meta = generations_metadata(result)
    assert meta["endpoint_status"] == "deprecated" and KLING in meta["endpoint_status_detail"]
    assert "deprecated" in meta["endpoint_status_detail"]


def test_an_active_endpoint_is_asked_once_per_run(make_simulator):
    sim = make_simulator()
    url = f"{sim.base_url}/v1"
    first = check_endpoint(url, KLING, run_id="run-a")
    assert first.state == "active" and not first.refused
    assert check_endpoint(url, KLING, run_id="run-a") is first  # cached for the run


def test_an_unreachable_registry_lets_the_day_proceed_and_says_so():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    status = check_endpoint(f"http://127.0.0.1:{port}/v1", KLING, run_id="unreachable", timeout=1.0)
    assert status.state == "unknown" and not status.refused
    assert "could not be asked" in status.line and "proceeding" in status.line and KLING in status.line


def test_a_registry_answering_errors_or_garbage_lets_the_day_proceed():
    class Hostile(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = b"<html>not json</html>" if "garbage" in self.path else b'{"error": {"type": "server_error"}}'
            self.send_response(200 if "garbage" in self.path else 500)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Hostile)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        for path in ("/v1", "/garbage/v1"):
            status = check_endpoint(f"{base}{path}", KLING, run_id="hostile", timeout=1.0)
            assert status.state == "unknown" and "proceeding" in status.line, status
    finally:
        server.shutdown()
