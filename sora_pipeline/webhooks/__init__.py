"""Webhook mode: fal calls us back when a request is done, so the generation step need not poll while it waits.

A webhook is a hint, never an outcome: the receiver records `artifacts["webhook"] = {"status", "signed",
"received_at"}` on the attempt, and the generation step, which waits on the ledger, then asks fal itself (status and
result from the queue origin, with the fal client) and records what fal answers. So a forged or mistaken webhook can
make the step ask fal early, but can never mark a running request failed (and resubmittable) or store a video URL.

The webhook room (no Dagster import):
- `receiver.create_webhook_app(ledger, config)` — an ASGI app (Starlette) with `POST /fal/webhook`: reads the
  body up to `config.max_body_bytes` (413 at the cap, chunked or not), verifies fal's Ed25519 signature
  (`signatures`), finds the attempt by `request_id` and records the hint. A request id the ledger does not know
  (yet — fal can call back before the submitter recorded it) is answered 409 so fal retries it.
- `receiver.WebhookServer` — that app with uvicorn in a background thread (tests, demos, a sidecar).
- `hints` — the ledger side: `record_webhook` writes the hint, `wait_for_webhook(...)` is what the generation
  engine awaits instead of polling fal.
- `python -m sora_pipeline.webhooks` — the service (`__main__`). It refuses to start without fal's keys
  (`SORA_WEBHOOK_JWKS_FILE` / `SORA_WEBHOOK_PUBLIC_KEYS`) unless `--insecure-test-mode` (or
  `SORA_WEBHOOK_INSECURE_TEST_MODE=1`) says it is a test, and listens on 127.0.0.1 unless `--host` says otherwise.
  Also read: `SORA_LEDGER_URL` (required), `SORA_WEBHOOK_MAX_SKEW` (seconds, default 300),
  `SORA_WEBHOOK_MAX_BODY_BYTES` (default 1 MiB).
"""
