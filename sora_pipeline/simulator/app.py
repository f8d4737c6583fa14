"""The simulator's ASGI app (Starlette): fal's queue URL shapes, real MP4 results, stats and fault injection.

Routes: `POST /{owner}/{alias}/{path}` (submit), `GET …/requests/{id}/status[?logs=1]`, `GET …/requests/{id}/status/
stream` (SSE), `GET …/requests/{id}` (result), `PUT …/requests/{id}/cancel`, `GET /_simulator/files/{name}`,
`GET /_simulator/stats`, `POST /_simulator/reset`, `GET /.well-known/sora-simulator` (no auth: {"simulator": true,
"version": 1}); every answer carries `x-sora-simulator: 1`. Hostile fault modes are answered by `hostile.py`; the
shared state lives in `core.py`. Encoding runs in a thread pool so the event loop never blocks.
A submit with `?fal_webhook=<url>` gets its outcome POSTed there when it finishes (`webhook.py`). fal's platform
API (`/v1/models…`: billing events, request history, registry, prices) is answered by `platform.py` and
`openapi_docs.py`; a result fetch carries `x-fal-billable-units` (what the job's billing event bills).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from sora_pipeline.simulator import hostile, openapi_docs, platform, storage_server
from sora_pipeline.simulator import endpoint_inputs
from sora_pipeline.simulator.config import SimulatorConfig
from sora_pipeline.simulator.core import auth_error as core_auth_error
from sora_pipeline.simulator.core import Simulator, SimulatorApp, _base, _clip_failed, _detail, _drop, _Ticker
from sora_pipeline.simulator.faults import PRE_RECORD_KINDS, fault_response, request_error_response
from sora_pipeline.simulator.jobs import ClipInfo, Job
from sora_pipeline.simulator.webhook_delivery import WebhookDeliverer

_FILE_NAME = re.compile(r"^[0-9a-f]{64}\.mp4$")

#: one line per request (`submit …`, `done …`, `cancel …`, refused submits). Silent unless a handler is attached:
#: `python -m sora_pipeline.simulator` attaches one on stderr; the pipeline's embedded simulator stays quiet.
request_log = logging.getLogger("sora_pipeline.simulator.requests")
request_log.addHandler(logging.NullHandler())
request_log.propagate = False


def _short(text: str, n: int = 40) -> str:
    text = " ".join(str(text).split())
    return repr(text if len(text) <= n else text[:n] + "…")


def create_app(config: SimulatorConfig | None = None) -> SimulatorApp:
    """The simulator as an ASGI app; its state is `app.sim` (a `Simulator`)."""
    config = config or SimulatorConfig()
    sim = Simulator(config)
    book, faults = sim.book, sim.faults
    ticker = _Ticker(book)
    logged_done: set[str] = set()  # ids whose `done` line was written (only while request_log is enabled)

    def log_done(job: Job) -> None:
        """`done <id> 4.0s` (or `failed <id> <reason>`) the first time a client sees the job finished."""
        if job.id in logged_done or job.state != "COMPLETED" or not request_log.isEnabledFor(logging.INFO):
            return
        logged_done.add(job.id)
        took = (job.finished_at or time.monotonic()) - job.submitted_at
        if job.failure or _clip_failed(job.clip):
            request_log.info("failed %s %s after %.1fs", job.id, job.failure or "video encoding failed", took)
        else:
            request_log.info("done %s %.1fs", job.id, took)

    def refused(what: str, resp: Response) -> Response:
        if request_log.isEnabledFor(logging.INFO):
            detail = ""
            with contextlib.suppress(Exception):
                detail = json.loads(resp.body).get("detail", "")
            request_log.info("%s refused %s %s", what, resp.status_code, _short(detail, 80) if detail else "")
        return resp

    def auth_error(request: Request) -> Response | None:
        return core_auth_error(config, request)

    def drawn(pick, call: str) -> str | None:
        with book.lock:
            kind = pick(call)
        if kind:
            book.count_fault(kind)
        return kind

    def draw_fault(call: str) -> str | None:
        return drawn(faults.pick, call)

    def draw_one_call(call: str) -> str | None:
        """A fault of the kinds that hit only this call (drawn where it applies; counted when drawn)."""
        return drawn(faults.pick_one_call, call)

    def canned(request: Request, kind: str) -> Response:
        return hostile.call_response(kind, request, config) or fault_response(kind, config)

    async def serve_fault(request: Request, kind: str | None) -> Response | None:
        """For non-submit calls: the fault's response, or None to answer normally (after `slow`)."""
        if kind is None:
            return None
        if kind == "drop":
            return await _drop(request)
        if kind == "slow":
            await asyncio.sleep(config.slow_seconds)
            return None
        return canned(request, kind)

    async def gate(request: Request, call: str, fault_call: str | None = None) -> Response | None:
        book.count_call(call)
        return auth_error(request) or await serve_fault(request, draw_fault(fault_call or call))

    def urls(base: str, job: Job, request: Request | None = None) -> dict[str, str]:
        if job.faults.foreign_urls and request is not None:
            base = hostile.foreign_base(config, request)
        root = f"{base}/{job.owner}/{job.alias}/requests/{job.id}"
        return {"status_url": f"{root}/status", "response_url": root, "cancel_url": f"{root}/cancel"}

    def status_body(request: Request, job: Job, with_logs: bool) -> tuple[int, dict[str, Any]]:
        with book.lock:
            return _status_body(request, job, with_logs)

    def _status_body(request: Request, job: Job, with_logs: bool) -> tuple[int, dict[str, Any]]:
        now = time.monotonic()
        u = urls(_base(request), job, request)
        body: dict[str, Any] = {"status": job.state, "request_id": job.id, "response_url": u["response_url"],
                                "status_url": u["status_url"], "cancel_url": u["cancel_url"]}
        if job.state == "IN_QUEUE":
            body["queue_position"] = book.queue_position(job)
            return 202, body
        body["logs"] = job.logs(now) if with_logs else None
        if job.state == "IN_PROGRESS":
            return 202, body
        log_done(job)
        body["status"] = "COMPLETED"
        body["metrics"] = {"inference_time": job.inference_time} if job.state == "COMPLETED" else {}
        if job.state == "CANCELLED":
            body.update(error="Request was cancelled", error_type="request_cancelled")
        elif job.failure or _clip_failed(job.clip):
            body.update(error=f"Request failed: {job.failure or 'video encoding failed'}",
                        error_type=job.failure or "internal_server_error")
        return 200, body

    async def submit(request: Request) -> Response:
        p = request.path_params
        book.count_call("submit")
        if (resp := auth_error(request)) is not None:
            return refused("submit", resp)
        endpoint = "/".join(x for x in (p["owner"], p["alias"], p.get("path", "").strip("/")) if x)
        if endpoint not in config.endpoint_ids:
            return refused("submit", _detail(404, f"Application '{endpoint}' not found"))
        kind = draw_fault("submit")
        if kind in PRE_RECORD_KINDS:  # answered before anything is recorded
            return canned(request, kind)
        try:
            data = json.loads(await request.body() or b"null")
        except ValueError:
            data = None
        if not isinstance(data, dict):
            return refused("submit", _detail(422, [{"loc": ["body"], "msg": "Input should be a JSON object",
                                                    "type": "json_invalid"}]))
        profile = book.profiles[endpoint]
        errors = endpoint_inputs.problems(profile, data)
        if errors:
            return refused("submit", _detail(422, errors))
        payload = endpoint_inputs.accepted_payload(profile, data)
        prompt = str(payload.get(profile.catalog_mapping["prompt"], ""))
        with book.lock:
            job_faults = faults.for_job()
        for name in ("request_error", "foreign_urls", "bad_request_id"):
            if getattr(job_faults, name):
                book.count_fault(name)
        failure = job_faults.request_error
        token = config.fail_prompts_containing
        if token and token in prompt:
            failure = "simulated_model_error"
        rid, gid = book.new_ids()
        now = time.monotonic()
        job = Job(id=rid, gateway_id=gid, owner=p["owner"], alias=p["alias"], endpoint=endpoint, seq=0,
                  payload=payload, submitted_at=now, wall_at_submit=time.time(),
                  eligible_at=now + config.queue_latency, faults=job_faults, failure=failure,
                  webhook=request.query_params.get("fal_webhook"), base_url=_base(request),
                  summary=endpoint_inputs.describe(profile, payload),
                  extra_latency=config.profile_latency_scale * profile.video.latency_s,
                  submitted_input=data, price=platform.job_price(profile, payload, data))
        if failure is None:
            job.clip = sim.clip_for(endpoint_inputs.video_shape(profile, payload))
            job.clip.add_done_callback(lambda _f, j=job: setattr(j, "clip_ready_at", time.monotonic()))
        position = book.add(job)
        if request_log.isEnabledFor(logging.INFO):
            duration, res, aspect = endpoint_inputs.asked(profile, payload)
            request_log.info("submit %s %s prompt=%s duration=%ss resolution=%s aspect_ratio=%s", rid, endpoint,
                             _short(prompt), duration, res, aspect)
        if job.webhook:
            deliverer.add(job)
        body = {"request_id": hostile.bad_request_id(rid) if job_faults.bad_request_id else rid,
                "gateway_request_id": gid, **urls(_base(request), job, request), "queue_position": position}
        if kind in ("drop", "slow", "malformed"):  # recorded: the job runs, the client just does not hear it
            if (resp := await serve_fault(request, kind)) is not None:
                return resp
        return JSONResponse(body, headers={"x-fal-request-id": rid})

    async def find_job(request: Request, call: str, fault_call: str | None = None) -> Job | Response:
        """The job a request-scoped call is about, or the answer to send instead (fault, auth, 404)."""
        p = request.path_params
        if (resp := await gate(request, call, fault_call)) is not None:
            return resp
        job = book.get(p["owner"], p["alias"], p["request_id"])
        if job is None:
            if call == "cancel":
                request_log.info("cancel %s NOT_FOUND", p["request_id"])
                return JSONResponse({"status": "NOT_FOUND"}, status_code=404)
            return _detail(404, "Request not found")
        return job

    def wants_logs(request: Request) -> bool:
        return request.query_params.get("logs", "0").lower() in ("1", "true")

    async def status(request: Request) -> Response:
        if isinstance(job := await find_job(request, "status"), Response):
            return job
        with_logs = wants_logs(request)
        code, body = status_body(request, job, with_logs)
        headers = {"x-fal-request-id": job.id}
        if draw_one_call("status") == "huge_status_json":
            body["logs"] = [{"message": "", "level": "INFO", "source": "user",
                             "timestamp": job.wall(job.submitted_at)}]
            return hostile.padded_json(book, config, body, ("logs", 0, "message"), code, headers)
        return JSONResponse(body, status_code=code, headers=headers)

    async def status_stream(request: Request) -> Response:
        if isinstance(job := await find_job(request, "status", "stream"), Response):
            return job
        with_logs = wants_logs(request)
        if draw_one_call("stream") == "huge_stream_event":
            _code, body = status_body(request, job, with_logs)
            return hostile.endless_event(book, config, f"data: {json.dumps(body)}\n\n".encode())

        async def events():
            # like fal: an event whenever the status changes, a comment now and then to keep the line alive;
            # every open stream shares one clock tick (one `advance` per tick, however many streams)
            last, quiet_since = None, time.monotonic()
            book.advance(time.monotonic())
            while True:
                position = book.queue_position(job) if job.state == "IN_QUEUE" else None
                signature = (job.state, position, job.started_at, job.finished_at)
                if signature != last:
                    last, quiet_since = signature, time.monotonic()
                    code, body = status_body(request, job, with_logs)
                    yield f"data: {json.dumps(body)}\n\n".encode()
                    if code == 200:
                        return
                elif time.monotonic() - quiet_since > 10:
                    quiet_since = time.monotonic()
                    yield b": keep-alive\n\n"
                await ticker.wait()

        return StreamingResponse(events(), media_type="text/event-stream")

    def finished_result(job: Job, base: str) -> tuple[int, Any, dict[str, str]]:
        """(status code, JSON body, headers) of a COMPLETED job's result (also the payload of its webhook)."""
        headers = {"x-fal-request-id": job.id}
        if job.failure == "simulated_model_error":
            err = [{"loc": ["body", "prompt"], "type": "simulated_model_error",
                    "msg": f"Simulated model failure (prompt contains {config.fail_prompts_containing!r})"}]
            return 422, {"detail": err}, {**headers, "X-Fal-Retryable": "false"}
        if job.failure:
            resp = request_error_response(job.failure)
            extra = {k: v for k, v in resp.headers.items() if k.lower().startswith("x-fal-")}
            if (units := platform.billable_units(job)) is not None:  # a content-policy refusal is billed
                extra["x-fal-billable-units"] = str(units)
            return resp.status_code, json.loads(resp.body), {**headers, **extra}
        if job.clip is None or _clip_failed(job.clip):
            return 500, {"detail": "Video encoding failed (simulator)", "error_type": "internal_server_error"}, \
                {**headers, "X-Fal-Error-Type": "internal_server_error"}
        clip: ClipInfo = job.clip.result()
        video: dict[str, Any] = {"url": f"{base}/_simulator/files/{clip.name}", "content_type": "video/mp4"}
        if config.include_metadata:
            video.update(file_name=clip.name, file_size=clip.file_size, width=clip.width, height=clip.height,
                         fps=clip.fps, num_frames=clip.num_frames, duration=clip.duration)
        body: dict[str, Any] = {"video": video}
        id_field = book.profiles[job.endpoint].output.id_field  # Sora's `video_id`; the other models return none
        digest = hashlib.sha256(job.id.encode()).hexdigest()
        if id_field:  # Sora also answers a thumbnail and a spritesheet (image files on fal's CDN)
            body[id_field] = "video_" + digest[:24]
            for extra in ("thumbnail", "spritesheet"):
                body[extra] = {"url": f"{base}/_simulator/files/{clip.name.rsplit('.', 1)[0]}-{extra}.jpg",
                               "content_type": "image/jpeg"}
        else:  # the other models answer the seed they used
            body["seed"] = int(digest[:8], 16)
        units = platform.billable_units(job)
        return 200, body, {**headers, **({"x-fal-billable-units": str(units)} if units is not None else {})}

    async def result(request: Request) -> Response:
        if isinstance(job := await find_job(request, "result"), Response):
            return job
        headers = {"x-fal-request-id": job.id}
        if job.state == "CANCELLED":
            return _detail(400, "Request was cancelled", **headers)
        if job.state != "COMPLETED":
            return _detail(400, "Request is still in progress", **headers)
        log_done(job)
        if job.faults.result_404_once and not job.result_404_served:
            job.result_404_served = True
            book.count_fault("result_404_once")
            return _detail(404, "Request not found", **headers)
        code, body, headers = finished_result(job, _base(request))
        if code == 200 and draw_one_call("result") == "huge_json":
            return hostile.padded_json(book, config, body, ("video", "file_name"), code, headers)
        return JSONResponse(body, status_code=code, headers=headers)

    async def cancel(request: Request) -> Response:
        if isinstance(job := await find_job(request, "cancel"), Response):
            return job
        if draw_one_call("cancel") == "cancel_already_completed":
            request_log.info("cancel %s ALREADY_COMPLETED (fault cancel_already_completed)", job.id)
            return hostile.cancel_already_completed()
        if book.cancel(job):
            request_log.info("cancel %s CANCELLATION_REQUESTED", job.id)
            return JSONResponse({"status": "CANCELLATION_REQUESTED"}, status_code=202)
        request_log.info("cancel %s ALREADY_COMPLETED", job.id)
        return JSONResponse({"status": "ALREADY_COMPLETED"}, status_code=400)

    async def files(request: Request) -> Response:
        book.count_call("file")
        if (resp := await serve_fault(request, draw_fault("file"))) is not None:
            return resp
        name = request.path_params["name"]
        path = os.path.join(sim.cache_dir, name)
        if not _FILE_NAME.match(name) or not os.path.isfile(path):
            return _detail(404, "File not found")
        if draw_one_call("file") == "endless_video":
            return hostile.endless_video(book, config)
        return FileResponse(path, media_type="video/mp4", filename=None)

    async def stats(request: Request) -> Response:
        return JSONResponse(sim.stats())

    async def reset(request: Request) -> Response:
        sim.reset()
        return JSONResponse({"status": "OK"})

    async def platform_gate(request: Request, path: str) -> Response | None:
        """A `/v1/models…` call: counted, then a configured fault (with "platform" in `fault_calls`) or None."""
        book.count_platform(path)
        return await serve_fault(request, draw_fault("platform"))

    deliverer = WebhookDeliverer(config, book, finished_result)
    sim.deliverer = deliverer

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await deliverer.start()
        try:
            yield
        finally:
            await deliverer.stop()
            await asyncio.to_thread(sim.close)

    req = "/{owner}/{alias}/requests/{request_id}"
    routes = [
        Route("/.well-known/sora-simulator", hostile.well_known, methods=["GET"]),
        Route("/_simulator/stats", stats, methods=["GET"]),
        Route("/_simulator/reset", reset, methods=["POST"]),
        Route("/_simulator/files/{name}", files, methods=["GET"]),
        *storage_server.ROUTES,  # fal storage uploads (simulator/storage_server.py)
        *openapi_docs.routes(config, gate=platform_gate),  # each endpoint's OpenAPI document and price
        *platform.routes(config, book=book, result_of=finished_result, gate=platform_gate,  # fal's platform API
                         profiles=openapi_docs.known_profiles, openapi_of=openapi_docs.queue_document),
        Route(req + "/status", status, methods=["GET"]),
        Route(req + "/status/stream", status_stream, methods=["GET"]),
        Route(req + "/cancel", cancel, methods=["PUT"]),
        Route(req, result, methods=["GET"]),
        Route("/{owner}/{alias}/{path:path}", submit, methods=["POST"]),
        Route("/{owner}/{alias}", submit, methods=["POST"]),
    ]
    app = SimulatorApp(routes=routes, lifespan=lifespan)
    app.sim = sim
    app.state.sim = sim
    return app
