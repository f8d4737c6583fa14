"""The endpoint-profile tool, above `fal` (whose URL rules, capped reads and platform client it uses):
`python -m sora_pipeline.endpoint_tools list` prints the profiles, `… refresh ENDPOINT_ID` refreshes one from fal's
OpenAPI document and price, `… refresh --all` every one from fal's platform API (docs/endpoints.md). Modules:
`__main__` (the command line), `refresh` (`refresh`, `refresh_all`), `fetch` (what is asked of fal, and how),
`profile_edit` (merge, file layout, checks, write), `errors` (exit codes, `RefreshError`). Nothing imports it."""
