"""The Dagster layer, on top of every other room: `definitions` (the code location's `defs`), `assets/`,
`checks`, `resources` and `warehouse_resource`, `automation` (schedule, sensor, job), `partitions`, `settings`."""
