"""One day's generations without Dagster: plan in the ledger, then per item claim → submit or resume → poll → result
→ download/archive/probe, with bounded concurrency, a cost guard, progress, and cancels when interrupted.

The ledger sits between "decide to submit" and "submit": the intent is written before the HTTP call and the
request id right after it returns, so no crash can make us pay twice or lose a result we paid for."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import partial

from sqlalchemy.exc import SQLAlchemyError

from sora_pipeline.fal.client import AsyncFalQueueClient, FalQueueClient
from sora_pipeline.endpoints import EndpointProfile
from sora_pipeline.fal.errors import (AmbiguousSubmitError, AuthenticationError, FalError, RateLimitedError,
                                      RequestFailedError, TransientError, WaitTimeoutError)
from sora_pipeline.fal.protocol import QueueHandle, QueueStatus
from sora_pipeline.generation.admission_broker import AccountAdmission
from sora_pipeline.generation.cancel import cancel_requests, interrupted_line
from sora_pipeline.generation.config import GenerationConfig
from sora_pipeline.generation.costs import BudgetGuard, priced_cost
from sora_pipeline.generation.failpoints import armed, failpoint
from sora_pipeline.generation.group_commit import GroupCommit
from sora_pipeline.generation.images import ImageUploads
from sora_pipeline.generation.interrupts import sigterm_raises_interrupt
from sora_pipeline.generation.pacing import Slot, SubmitsFirst, every
from sora_pipeline.generation.planning import payload_for, plan_items
from sora_pipeline.generation.progress import Progress
from sora_pipeline.generation.stops import key_stopped_the_run, ledger_stopped_the_run
from sora_pipeline.generation.unknowns import handles_on, payload_fingerprint, resolve_day
from sora_pipeline.generation.records import Outcome, Planned, WorkItem
from sora_pipeline.generation.videos import download_and_probe, download_client
from sora_pipeline.coordination import Admission, LedgerUnavailable, UploadCache
from sora_pipeline.ledger import Decision, Ledger, LedgerEntry, RequestState, would_submit
from sora_pipeline.redact import install_log_redaction, register_secret

log = logging.getLogger("sora_pipeline.generation")
SUBMITS_FIRST_MAX_WAIT = 2.0  # seconds a status stream or a download waits for pending submits at most


class GenerationRunner:
    """One day's items through the ledger and fal's queue (`run(items)`, blocking); one client per endpoint."""

    def __init__(self, config: GenerationConfig, client_factory: Callable[[EndpointProfile], AsyncFalQueueClient],
                 ledger: Ledger, *, emit: Callable[[str], None] | None = None,
                 sync_client_factory: Callable[[EndpointProfile], FalQueueClient] | None = None) -> None:
        self.config = config
        self._client_factory = client_factory
        self._sync_client_factory = sync_client_factory
        self.ledger = ledger
        self._emit = emit or log.info
        self._in_flight: dict[str, tuple[int, QueueHandle]] = {}
        self._endpoint_of: dict[str, EndpointProfile] = {}  # request key → its endpoint (to cancel it there)
        self._crashing = False

        self.progress: Progress | None = None
        self.estimated_total = 0.0
        self._rescued: list[str] = []  # request ids fal answered that the ledger could not record
        self._stopping: Exception | None = None  # the run is stopping (ledger down, key refused)
        self._admission: AccountAdmission | None = None
        self._claims: set[str] = set()  # request keys this run has claimed and is submitting
        register_secret(config.openai_api_key)
        install_log_redaction()

    async def _db(self, fn, *args, **kwargs):
        """Run a (blocking) ledger call on the ledger's own threads."""
        return await asyncio.get_running_loop().run_in_executor(self._db_pool, partial(fn, *args, **kwargs))

    # -- entry point ---------------------------------------------------------------------------------
    def run(self, items: Iterable[WorkItem]) -> list[Outcome]:
        """Blocking. On interruption (Dagster run termination, SIGTERM, Ctrl-C) the requests this run is
        waiting on are cancelled through their cancel_url (bounded time) and the ledger records it."""
        items = list(items)
        # SQLite takes one writer at a time: one thread avoids its busy-wait back-off; servers take a few
        self._db_pool = ThreadPoolExecutor(max_workers=1 if self.ledger.dialect == "sqlite" else 4,
                                           thread_name_prefix="ledger")
        self._write = GroupCommit(self.ledger, self._db_pool)
        # the process's long-lived objects (Dagster, the libraries: ~300k) out of the cyclic GC's sight, so its
        # full collections (~150 ms each) do not stall the event loop; refcounting still frees them. Not undone:
        # `gc.unfreeze()` would hand them all back to the next full collection right when the step finishes.
        gc.freeze()
        try:
            with sigterm_raises_interrupt():
                return asyncio.run(self._run(items))
        except (LedgerUnavailable, SQLAlchemyError) as exc:
            # nothing is cancelled: what was paid for keeps running at fal and the next run resumes it
            raise ledger_stopped_the_run(self.ledger, exc, len(self._in_flight), self._rescued) from None
        except AuthenticationError as exc:  # nothing more is sent; what fal accepted before is resumed
            raise key_stopped_the_run(exc, len(self._in_flight)) from None
        except BaseException:
            self.cancel_in_flight()
            raise
        finally:
            self._db_pool.shutdown(wait=True)

    def plan(self, items: list[WorkItem]) -> list[Planned]:
        """Record the rescued ids of an earlier run, plan the items (see `planning.plan_items`), then resolve the
        day's unknown submits from fal's request history (see `unknowns.resolve_unknowns`)."""
        rescued = self.ledger.replay_rescued()  # ids a previous run could not record: resumed, never resubmitted
        if rescued:
            self._emit(f"recorded {rescued} request id(s) from the rescue journal {self.ledger.rescue_journal.path}")
        planned = plan_items(items, self.config, self.ledger)
        self.resolve_unknowns({p.spec.request_key for p in planned if p.spec})
        return planned

    def resolve_unknowns(self, keys: set[str]) -> list:
        """The day's unknown submits among `keys` looked up in fal's request history (`unknowns.resolve_day`)."""
        cfg = self.config
        return resolve_day(self.ledger, cfg.day, keys, owner=cfg.owner, policy=cfg.policy, history=cfg.history,
                           handle_for=handles_on(cfg.queue_base_url, cfg.endpoints.profiles),
                           settle=timedelta(seconds=cfg.unknown_settle), emit=self._emit)

    async def _run(self, items: list[WorkItem]) -> list[Outcome]:
        cfg = self.config
        planned = await asyncio.to_thread(self.plan, items)
        self.progress = Progress(len(planned), emit=self._emit, interval=cfg.progress_interval)
        known = {e.request_key: e for e in await self._db(self.ledger.entries_for_day, cfg.day)}
        entries = {p.spec.request_key: known.get(p.spec.request_key) for p in planned if p.spec}
        to_submit = [p for p in planned if p.spec and would_submit(entries[p.spec.request_key], cfg.policy)]
        self.estimated_total = sum(p.spec.estimated_cost for p in to_submit)
        spent = await self._db(self.ledger.spent, cfg.day, backend=cfg.backend)
        self._emit(f"{len(planned)} items for {cfg.day}: {len(to_submit)} to submit "
                   f"(estimated ${self.estimated_total:,.2f}), {len(planned) - len(to_submit)} reuse/resume/skip; "
                   f"already spent today ${spent:,.2f}" + (" [DRY RUN: nothing is submitted]" if cfg.dry_run
                                                           else ""))
        if cfg.dry_run:
            return [Outcome.dry_run(p, self.config, entries.get(p.spec.request_key) if p.spec else None) for p in planned]
        if not planned:  # a quiet day: nothing to claim, submit or wait for (no client, no account places)
            return []
        self._budget = BudgetGuard(per_run_cap=cfg.run_budget, per_day_cap=cfg.day_budget,
                                   already_spent_today=spent)
        self._slots = asyncio.Semaphore(cfg.max_concurrency)
        self._submits_first = SubmitsFirst(SUBMITS_FIRST_MAX_WAIT)
        self._submitting = asyncio.Semaphore(cfg.submit_concurrency)
        self._downloads = asyncio.Semaphore(cfg.download_concurrency)
        self._images = ImageUploads(UploadCache(self.ledger.database), self._db, cfg)  # large images: fal storage, uploaded once
        failpoint("before_submit")  # planned in the ledger, nothing claimed or sent yet
        downloads = download_client()
        admission = (AccountAdmission(Admission(self.ledger.database), self._db, account=cfg.backend, cap=cfg.account_cap,
                                      owner=cfg.owner, lease_s=cfg.admission_lease)
                     if cfg.account_cap else contextlib.nullcontext())
        used = {p.endpoint_id: p.profile for p in planned if p.spec}
        async with contextlib.AsyncExitStack() as stack:  # one queue client per endpoint the day uses
            self._clients = {eid: await stack.enter_async_context(self._client_factory(profile))
                             for eid, profile in used.items()}
            self._http = await stack.enter_async_context(downloads)
            self._admission = await stack.enter_async_context(admission)
            outcomes = await self._process_all(planned, entries)
        self.progress.maybe_log(force=True)
        self._emit(f"ledger: {self._write.writes:,} writes in {self._write.batches:,} commits (group commit)")
        return list(outcomes)

    async def _process_all(self, planned: list[Planned], entries: dict[str, LedgerEntry | None]) -> list[Outcome]:
        """Every item at once. If the ledger fails, submits already sent finish and record (or rescue) their
        request ids, no new submit starts, and the run stops with the ledger's error."""
        tasks = [asyncio.ensure_future(self._process(p, entries.get(p.spec.request_key) if p.spec else None))
                 for p in planned]
        if not tasks:
            return []
        # a progress line even while nothing changes (`maybe_log` keeps the cadence), and the claims' heartbeat
        ticker = asyncio.ensure_future(every(self.config.progress_interval / 4, self.progress.maybe_log))
        heartbeat = asyncio.ensure_future(every(self.config.submit_heartbeat, self._renew_claims))
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            failure = next((t.exception() for t in tasks if t.done() and not t.cancelled() and t.exception()), None)
            if failure is not None:
                if isinstance(failure, (LedgerUnavailable, AuthenticationError)):
                    self._stopping = failure  # no new submit starts
                    with contextlib.suppress(TimeoutError):  # every submit in flight records or rescues its id
                        async with asyncio.timeout(self.config.cancel_timeout + 30):
                            for _ in range(self.config.submit_concurrency):
                                await self._submitting.acquire()
                raise failure
            return [t.result() for t in tasks]
        finally:
            ticker.cancel()
            heartbeat.cancel()
            for t in tasks:
                t.cancel()

    async def _renew_claims(self) -> None:
        """The heartbeat: renew the submit claims this run is sending, so their lease can be short — a claim that
        stops being renewed belongs to a dead process, and the next run resolves it at once."""
        if self._claims:
            try:
                await self._db(self.ledger.renew_claims, sorted(self._claims), owner=self.config.owner)
            except Exception as exc:  # retried at the next beat; the ledger's own failure stops the run anyway
                log.warning("could not renew submit claims: %s", exc)

    # -- per item ------------------------------------------------------------------------------------
    async def _process(self, p: Planned, entry: LedgerEntry | None) -> Outcome:
        out = Outcome.for_planned(p, self.config)
        progress = self.progress
        if p.error:
            progress.set(p.item.item_id, "failed")
            return out.fail("failed", "invalid_image", p.error, False)
        try:
            needed = not (entry and entry.state == RequestState.COMPLETED and not self.config.policy.regenerate)
            async with Slot(self._slots, self._admission, needed=needed) as slot:
                entry = await self._claim_and_wait(p, out, entry, slot)
            if entry is not None and out.status == "completed":
                await self._fetch_video(p, out, entry)
        except (LedgerUnavailable, AuthenticationError):
            raise  # not one item's problem: the run stops (see `run`)
        except FalError as exc:
            out.fail("failed", exc.error_type, str(exc), exc.retryable)
        except Exception as exc:  # one item never fails the day
            log.exception("item %s failed unexpectedly", p.item.item_id)
            out.fail("failed", type(exc).__name__, f"unexpected error: {exc}", True)
        progress.set(p.item.item_id, out.status if out.status != "pending" else "unknown")
        return out

    async def _claim_and_wait(self, p: Planned, out: Outcome, entry: LedgerEntry | None,
                              slot: Slot) -> LedgerEntry | None:
        """Claim the item in the ledger and act on the decision; returns the completed entry or None."""
        cfg, key, item = self.config, p.spec.request_key, p.item
        reserved = would_submit(entry, cfg.policy)
        if reserved and not self._budget.try_reserve(p.spec.estimated_cost):
            out.fail("skipped", "budget", f"item {item.item_id}: skipped, the budget cap would be exceeded by "
                     f"${p.spec.estimated_cost:,.2f} (remaining ${self._budget.remaining():,.2f})")
            return None
        started, handle = time.monotonic(), None
        while True:
            if would_submit(entry, cfg.policy) or (entry and entry.state == RequestState.SUBMITTING):
                try:  # a large image gets its storage URL
                    p = await self._images.prepare(p, self._clients[p.endpoint_id])
                except Exception:  # the item fails; nothing was sent, so its reservation is given back
                    if reserved:
                        self._budget.release(p.spec.estimated_cost)
                    raise
                # claim → HTTP submit → request id recorded, as one critical section: a crash can leave at
                # most `submit_concurrency` requests without a recorded id (reported as unknown)
                arguments = payload_for(p, self.config)
                async with self._submits_first.waiting(), self._submitting:
                    if self._stopping is not None:  # the run is stopping: no new submit
                        raise self._stopping
                    self._claims.add(key)  # renewed by the heartbeat while this section runs
                    try:
                        decision, entry = await self._write("claim", key, owner=cfg.owner, policy=cfg.policy,
                                                            day_budget=cfg.day_budget,
                                                            payload_sha256=payload_fingerprint(arguments))
                        if decision == Decision.SUBMIT:
                            handle = await self._submit(p, out, entry.attempt, arguments)
                    finally:
                        self._claims.discard(key)
            else:
                decision, entry = await self._write("claim", key, owner=cfg.owner, policy=cfg.policy)
            if decision != Decision.BUSY or time.monotonic() - started > cfg.policy.submit_lease_seconds:
                break
            await asyncio.sleep(self._clients[p.endpoint_id].poll.interval)
        out.attempt = entry.attempt
        if decision == Decision.REUSE:
            self.progress.reused += 1
            out.decision = "reused"
            return out.fill_completed(entry)
        if decision == Decision.SKIP_BUDGET:
            self._budget.release(p.spec.estimated_cost)  # this run's reservation: nothing was sent
            out.fail("skipped", "budget", f"item {item.item_id}: skipped, the day's budget ${cfg.day_budget:,.2f} "
                     f"would be exceeded by ${p.spec.estimated_cost:,.2f} (spent by every run of {cfg.day})")
            return None
        if decision in (Decision.SKIP_UNKNOWN, Decision.SKIP_FAILED, Decision.BUSY):
            out.decision = "skipped"
            out.fill_from_entry(entry)
            status = {Decision.SKIP_UNKNOWN: "unknown", Decision.SKIP_FAILED: "failed"}.get(decision, "pending")
            reason = entry.error_message or f"ledger state {entry.state.value}"
            if decision == Decision.SKIP_UNKNOWN:
                reason = (f"{reason} — not resubmitted automatically (request_key {key}); set "
                          "resubmit_unknown to submit it again")
            if decision == Decision.BUSY:
                reason = "another run holds the submit claim for this item"
            out.fail(status, entry.error_type or status, reason, entry.retryable)
            return None
        if decision == Decision.SUBMIT:
            if handle is None:
                return None
        else:  # RESUME
            self.progress.resumed += 1
            out.decision = "resumed"
            handle = QueueHandle(entry.request_id, entry.status_url, entry.response_url, entry.cancel_url)
            out.request_id, out.submitted_at = entry.request_id, entry.submitted_at
        return await self._wait_for_result(p, out, entry.attempt, handle, slot)

    async def _submit(self, p: Planned, out: Outcome, attempt: int, arguments: dict) -> QueueHandle | None:
        key, item = p.spec.request_key, p.item
        self.progress.set(item.item_id, "submitting")
        out.decision = "submitted"
        try:
            handle = await self._clients[p.endpoint_id].submit(arguments)
        except AmbiguousSubmitError as exc:
            await self._write("mark_unknown", key, attempt, error_message=str(exc))
            out.fail("unknown", exc.error_type, f"{exc} (request_key {key}; not resubmitted automatically)")
            return None
        except AuthenticationError as exc:  # refused before fal created a request: nothing accepted or billed
            await self._write("mark_refused", key, attempt, error_type=exc.error_type, error_message=str(exc))
            out.fail("failed", exc.error_type, str(exc), True)
            raise
        except FalError as exc:
            await self._write("mark_failed", key, attempt, error_type=exc.error_type, error_message=str(exc),
                              retryable=exc.retryable)
            out.fail("failed", exc.error_type, str(exc), exc.retryable)
            return None
        now = datetime.now(UTC)
        ids = dict(request_id=handle.request_id, status_url=handle.status_url, response_url=handle.response_url,
                   cancel_url=handle.cancel_url, submitted_at=now)
        try:
            await self._write("mark_submitted", key, attempt, **ids)
        except LedgerUnavailable:
            # paid for, but not recorded: keep the id where the next run finds it, then stop the run
            await asyncio.to_thread(self.ledger.rescue, key, attempt, **ids)
            self._rescued.append(handle.request_id)
            raise
        await self._crash_point("after_submit", held=1)
        self.progress.submitted += 1
        out.request_id, out.submitted_at = handle.request_id, now
        return handle

    async def _wait_for_result(self, p: Planned, out: Outcome, attempt: int, handle: QueueHandle,
                               slot: Slot) -> LedgerEntry | None:
        key, item_id = p.spec.request_key, p.item.item_id
        self._in_flight[key] = (attempt, handle)
        self._endpoint_of[key] = p.profile
        client = self._clients[p.endpoint_id]
        seen_logs = 0

        def on_status(_h: QueueHandle, status: QueueStatus) -> None:
            nonlocal seen_logs
            if status.status == "IN_PROGRESS" and out.started_at is None:
                out.started_at = datetime.now(UTC)
            phase = {"IN_QUEUE": "in_queue", "IN_PROGRESS": "in_progress"}.get(status.status, "in_progress")
            self.progress.set(item_id, phase, queue_position=status.queue_position)
            for entry in status.logs[seen_logs:]:
                log.debug("fal log [%s %s] %s", item_id, handle.request_id, entry.get("message"))
            seen_logs = max(seen_logs, len(status.logs))

        self.progress.set(item_id, "in_queue")
        await self._submits_first.wait()  # a burst of submits (the first wave) goes out before its status streams
        if self.config.webhook_wait:  # the receiver writes fal's confirmed outcome into the ledger
            from sora_pipeline.webhooks.hints import completed_by_webhook  # webhook mode only

            try:
                entry = await completed_by_webhook(self.ledger, key, attempt, timeout=self.config.webhook_wait,
                                                   poll_ledger_every=self.config.webhook_ledger_poll)
            except RequestFailedError:
                self._in_flight.pop(key, None)
                raise
            if entry is not None:
                self._in_flight.pop(key, None)
                return out.fill_completed(entry)
        try:
            await client.wait(handle, timeout=self.config.total_timeout, on_status=on_status)
            slot.release()  # done at fal: no longer counts against its concurrency
            await self._crash_point("mid_poll")
            output = await client.result(handle)
        except (WaitTimeoutError, TransientError, RateLimitedError) as exc:
            # the request may still finish (and be billed) at fal: keep it SUBMITTED so the next run resumes
            # polling it instead of paying for it again
            self._in_flight.pop(key, None)
            out.fail("pending", exc.error_type, f"{exc}; the next run resumes polling it", True)
            return None
        except AuthenticationError as exc:  # the key, not the request: it stays SUBMITTED and is resumed
            self._in_flight.pop(key, None)
            out.fail("pending", exc.error_type, f"{exc}; the next run resumes polling it", True)
            raise
        except FalError as exc:
            self._in_flight.pop(key, None)
            await self._write("mark_failed", key, attempt, error_type=exc.fal_error_type or exc.error_type,
                              error_message=str(exc), retryable=exc.retryable)
            raise
        # (on cancellation the entry stays, so `cancel_in_flight` can cancel it at fal)
        completed_at = datetime.now(UTC)
        self._in_flight.pop(key, None)
        seconds = output.video.duration or float(p.item.duration or 0) or None
        prices = self.config.prices_of(p.endpoint_id)
        size = dict(resolution=p.item.resolution, height=output.video.height, width=output.video.width,
                    byo_openai_key=p.spec.used_openai_key, audio=prices.audio_of(p.item.params))
        cost = priced_cost(prices, seconds_generated=seconds, **size)
        # what fal says it bills (its units on the result; null stays null); the unit's price once the output's
        # size is known for sure (`_fetch_video`, after the probe)
        billing = {"billed_units": output.billable_units}
        document = output.model_dump(mode="json", exclude_none=True)
        _, _, entry = await asyncio.gather(
            self._write("mark_completed", key, attempt, output=document, completed_at=completed_at,
                        seconds_generated=seconds, actual_cost=cost),
            self._write("set_artifacts", key, attempt, billing),
            self._write("get", key))  # queued in this order, so in one batch the read sees the writes
        return out.fill_completed(entry)

    async def _fetch_video(self, p: Planned, out: Outcome, entry: LedgerEntry) -> None:
        """Download (or reuse the archived copy), hash and probe; record the artifacts in the ledger."""
        artifacts = entry.artifacts or {}
        if artifacts.get("probe") and (artifacts.get("archive_uri") or not self.config.archive_root):
            out.apply_artifacts(artifacts)
            return
        await self._submits_first.wait()  # freed slots are refilled before finished videos are fetched
        self.progress.set(p.item.item_id, "downloading")
        async with self._downloads:
            artifacts = await download_and_probe(self._http, self.config, p, out,
                                                 before_probe=lambda: self._crash_point("mid_download"))
        await self._write("set_artifacts", p.spec.request_key, entry.attempt, artifacts)
        out.apply_artifacts(artifacts)

    async def _crash_point(self, name: str, held: int = 0) -> None:
        """Test crash points fire while no submit is in flight (a crash *during* a submit is the unknown case,
        tested on its own)."""
        if armed(name) and not self._crashing:
            self._crashing = True  # the first to arrive fires; the others carry on (and leave the section)
            for _ in range(self.config.submit_concurrency - held):  # until no other submit is in flight
                await self._submitting.acquire()
            failpoint(name)

    # -- interruption --------------------------------------------------------------------------------
    def cancel_in_flight(self) -> int:
        """Best effort, bounded: cancel every request this run is waiting on (see `cancel.cancel_requests`), and
        say in one line what became of them."""
        default = self.config.endpoints.default
        pending = {key: (*held, self._endpoint_of.get(key, default)) for key, held in self._in_flight.items()}
        if not pending or self._sync_client_factory is None:
            return 0
        self._emit(interrupted_line(cancel_requests(pending, self._sync_client_factory, self.ledger,
                                                    owner=self.config.owner, timeout=self.config.cancel_timeout)))
        return len(pending)
