"""Dagster assets, one module per stage: catalog → generations → video metadata → analytics."""
