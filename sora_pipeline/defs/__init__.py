"""The Dagster layer, on top of every other room: `definitions` (the code location's `defs`), `assets/`,
`checks`, `resources`, `warehouse_resource`, `database_resource` (the shared database) and `platform_resource`,
`automation` (schedule, sensor, job), `partitions`, `settings`."""
