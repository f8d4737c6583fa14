"""Job bookkeeping of the simulator: a FIFO queue with optional concurrency limit, wall-clock progress, stats.

Jobs move IN_QUEUE → IN_PROGRESS → COMPLETED by monotonic time from submit; `advance(now)` replays the events
that happened since the last call in time order, so the schedule does not depend on how often anyone polls.
All methods are guarded by one lock (the HTTP handlers and in-process `stats()` may run on different threads).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sora_pipeline.endpoints import EndpointProfile, get_profile
from sora_pipeline.simulator.config import SimulatorConfig
from sora_pipeline.simulator.faults import JobFaults

CALLS = ("submit", "status", "result", "cancel", "file")
#: counters of webhook delivery (`stats()["webhook_deliveries"]`)
WEBHOOK_COUNTERS = ("attempts", "delivered", "duplicates", "failed_attempts", "gave_up", "dropped", "refused")


@dataclass(frozen=True)
class ClipInfo:
    """A rendered MP4 in the cache directory."""

    name: str
    path: str
    width: int
    height: int
    fps: int
    num_frames: int
    duration: float
    file_size: int


@dataclass(eq=False)
class Job:
    id: str
    gateway_id: str
    owner: str
    alias: str
    endpoint: str
    seq: int
    payload: dict[str, Any]  # the accepted input: defaults filled in, secrets dropped
    submitted_at: float
    wall_at_submit: float
    eligible_at: float
    faults: JobFaults
    failure: str | None = None  # simulated_model_error | content_policy_violation | runner_disconnected
    webhook: str | None = None
    base_url: str | None = None  # the server's base URL as the submitter saw it (result URLs in webhooks)
    state: str = "IN_QUEUE"  # IN_QUEUE | IN_PROGRESS | COMPLETED | CANCELLED
    started_at: float | None = None
    finished_at: float | None = None
    clip: Future | None = None
    clip_ready_at: float | None = None
    result_404_served: bool = False
    inference_time: float | None = None
    summary: str | None = None  # the "Starting …" log line (model and what it was asked for)
    extra_latency: float = 0.0  # the endpoint's own latency (its profile's, scaled: `profile_latency_scale`)
    submitted_input: dict[str, Any] | None = None  # the body exactly as submitted (request history's json_input)
    price: tuple[str, float, float] | None = None  # (unit, USD per unit, requested seconds): its billing event

    def finish_time(self, run_latency: float) -> float:
        assert self.started_at is not None
        earliest = self.started_at + run_latency + self.extra_latency
        if self.clip is None:
            return earliest
        if self.clip_ready_at is None:
            return math.inf
        return max(earliest, self.clip_ready_at)

    def wall_ts(self, t: float) -> float:
        """The wall-clock time (epoch seconds) of monotonic time `t` of this job."""
        return self.wall_at_submit + (t - self.submitted_at)

    def wall(self, t: float) -> str:
        return datetime.fromtimestamp(self.wall_ts(t), tz=timezone.utc).isoformat().replace("+00:00", "Z")

    def logs(self, now: float) -> list[dict[str, str]]:
        events: list[tuple[float, str, str, str]] = [(self.submitted_at, "INFO", "gateway", "Request queued")]
        if self.started_at is not None:
            events.append((self.started_at, "INFO", "user", self.summary or "Starting image-to-video"))
            events.append((self.started_at, "INFO", "user", "Encoding video"))
        if self.finished_at is not None and self.state == "COMPLETED":
            if self.failure:
                events.append((self.finished_at, "ERROR", "user", f"Generation failed: {self.failure}"))
            else:
                events.append((self.finished_at, "INFO", "user", "Video ready"))
        if self.state == "CANCELLED" and self.finished_at is not None:
            events.append((self.finished_at, "INFO", "gateway", "Request cancelled"))
        return [{"message": m, "level": lvl, "source": src, "timestamp": self.wall(t)}
                for t, lvl, src, m in events if t <= now]


def input_hash(payload: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of an input (api_key removed, defaults filled in)."""
    body = {k: v for k, v in payload.items() if k != "api_key"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class JobBook:
    """The queue, the jobs and the counters behind `/_simulator/stats`."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        #: the profile of each endpoint it serves, resolved once (its input schema, output, prices, video shape)
        self.profiles: dict[str, EndpointProfile] = {e: get_profile(e) for e in config.endpoint_ids}
        self.lock = threading.RLock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self._rng = random.Random(f"sora-sim-ids:{self.config.seed}")
            self.jobs: dict[str, Job] = {}
            self._queue: list[Job] = []
            self._running: list[Job] = []
            self._slot_free_at = -math.inf
            self._seq = 0
            self.submits = 0
            self.submits_by_input: dict[str, int] = {}
            self.submits_by_prompt: dict[str, int] = {}
            self.calls = {c: 0 for c in CALLS}
            self.cancels = 0
            self.faults: dict[str, int] = {}
            self.hostile_bytes_sent = 0
            self.completed = 0
            self.failed = 0
            self.cancelled = 0
            self.max_running_seen = 0
            self.max_in_flight_seen = 0  # queued + running at once (what an account-wide cap bounds)
            self.webhooks: list[dict[str, Any]] = []
            self._webhook_info: dict[str, dict[str, Any]] = {}
            self.webhook_counts = {c: 0 for c in WEBHOOK_COUNTERS}
            self.platform_calls: dict[str, int] = {}  # `/v1/models…` requests by path
            self.started_wall = time.time()  # foreign billing events are stamped from here

    # -- counters -------------------------------------------------------------------------------------------
    def count_call(self, call: str) -> None:
        with self.lock:
            self.calls[call] = self.calls.get(call, 0) + 1

    def count_platform(self, path: str) -> None:
        with self.lock:
            self.platform_calls[path] = self.platform_calls.get(path, 0) + 1

    def count_fault(self, kind: str) -> None:
        with self.lock:
            self.faults[kind] = self.faults.get(kind, 0) + 1

    def count_hostile_bytes(self, n: int) -> None:
        with self.lock:
            self.hostile_bytes_sent += n

    def count_webhook(self, counter: str, request_id: str | None = None, **info: Any) -> None:
        """Bump a delivery counter and update the job's entry of `stats()["webhooks"]`."""
        with self.lock:
            self.webhook_counts[counter] = self.webhook_counts.get(counter, 0) + 1
            entry = self._webhook_info.get(request_id) if request_id else None
            if entry is not None:
                if counter == "attempts":
                    entry["attempts"] += 1
                if counter in ("delivered", "duplicates"):
                    entry["deliveries"] += 1
                entry.update(info)

    # -- lifecycle ------------------------------------------------------------------------------------------
    def new_ids(self) -> tuple[str, str]:
        with self.lock:
            rid = uuid.UUID(int=self._rng.getrandbits(128), version=4)
            gid = uuid.UUID(int=self._rng.getrandbits(128), version=4)
            return str(rid), str(gid)

    def add(self, job: Job) -> int:
        """Record an accepted submit; returns its 0-based queue position."""
        with self.lock:
            now = time.monotonic()
            self.advance(now)
            self._seq += 1
            job.seq = self._seq
            self.jobs[job.id] = job
            self._queue.append(job)
            self.max_in_flight_seen = max(self.max_in_flight_seen, len(self._queue) + len(self._running))
            self.submits += 1
            h = input_hash(job.payload)
            self.submits_by_input[h] = self.submits_by_input.get(h, 0) + 1
            prompt = str(job.payload.get("prompt", ""))
            self.submits_by_prompt[prompt] = self.submits_by_prompt.get(prompt, 0) + 1
            if job.webhook:
                info = {"request_id": job.id, "url": job.webhook, "state": "pending", "attempts": 0,
                        "deliveries": 0, "last_status": None}
                self.webhooks.append(info)
                self._webhook_info[job.id] = info
            self.advance(now)
            return self.queue_position(job)

    def get(self, owner: str, alias: str, request_id: str) -> Job | None:
        with self.lock:
            job = self.jobs.get(request_id)
            if job is None or job.owner != owner or job.alias != alias:
                return None
            self.advance(time.monotonic())
            return job

    def ended(self) -> list[Job]:
        """Jobs that reached COMPLETED (a snapshot; failures included, cancelled ones not)."""
        with self.lock:
            self.advance(time.monotonic())
            return [j for j in self.jobs.values() if j.state == "COMPLETED" and j.finished_at is not None]

    def queue_position(self, job: Job) -> int:
        with self.lock:
            try:
                return self._queue.index(job)
            except ValueError:
                return 0

    def cancel(self, job: Job) -> bool:
        """Cancel a queued/running job; False if it already reached a terminal state."""
        with self.lock:
            now = time.monotonic()
            self.advance(now)
            if job.state in ("COMPLETED", "CANCELLED"):
                return False
            limit = self.config.max_running or math.inf
            if job in self._queue:
                self._queue.remove(job)
            if job in self._running:
                if len(self._running) >= limit:
                    self._slot_free_at = now
                self._running.remove(job)
            job.state, job.finished_at = "CANCELLED", now
            self.cancels += 1
            self.cancelled += 1
            self.advance(now)
            return True

    def advance(self, now: float) -> None:
        """Replay starts and completions that happened up to `now`, in time order."""
        with self.lock:
            limit = self.config.max_running or math.inf
            run_latency = self.config.run_latency
            while True:
                finish_job, finish_t = None, math.inf
                for j in self._running:
                    t = j.finish_time(run_latency)
                    if t <= now and t < finish_t:
                        finish_job, finish_t = j, t
                start_t = math.inf
                if self._queue and len(self._running) < limit:
                    start_t = max(self._queue[0].eligible_at, self._slot_free_at)
                    if start_t > now:
                        start_t = math.inf
                if finish_job is None and start_t == math.inf:
                    return
                if start_t <= finish_t:
                    job = self._queue.pop(0)
                    job.state, job.started_at = "IN_PROGRESS", start_t
                    self._running.append(job)
                    self.max_running_seen = max(self.max_running_seen, len(self._running))
                else:
                    if len(self._running) >= limit:
                        self._slot_free_at = finish_t
                    self._running.remove(finish_job)
                    finish_job.state, finish_job.finished_at = "COMPLETED", finish_t
                    finish_job.inference_time = round(finish_t - (finish_job.started_at or finish_t), 3)
                    self.completed += 1
                    if finish_job.failure or (finish_job.clip is not None and finish_job.clip.exception()):
                        self.failed += 1

    def stats(self) -> dict[str, Any]:
        with self.lock:
            self.advance(time.monotonic())
            return {
                "submits": self.submits,
                "submits_by_input": dict(self.submits_by_input),
                "submits_by_prompt": dict(self.submits_by_prompt),
                "calls": dict(self.calls),
                "cancels": self.cancels,
                "faults": dict(self.faults),
                "hostile_bytes_sent": self.hostile_bytes_sent,
                "completed": self.completed,
                "failed": self.failed,
                "cancelled": self.cancelled,
                "in_queue": len(self._queue),
                "in_progress": len(self._running),
                "max_running_seen": self.max_running_seen,
                "max_in_flight_seen": self.max_in_flight_seen,
                "webhooks": [dict(w) for w in self.webhooks],
                "webhook_deliveries": dict(self.webhook_counts),
                "platform_calls": dict(self.platform_calls),
            }
