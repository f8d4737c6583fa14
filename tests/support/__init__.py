"""Test support shared by the tests, the benchmarks and `scripts/ui_check.py` (not product code): `fixtures` builds
small real catalogs and images, resources pointed at a simulator, and one day's materialization."""
