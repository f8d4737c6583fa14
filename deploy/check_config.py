"""Validate a Dagster instance file before deploying it: `python deploy/check_config.py deploy/dagster.k8s.yaml`.

Checks, without connecting to anything: the YAML parses; the file matches Dagster's instance schema; every
configurable class it names (storage, run coordinator, run launcher, …) accepts its `config` block when that
class's package is installed (otherwise it is reported as not checked); that dagster-postgres storage uses the
psycopg2 driver (`postgresql+psycopg2://`); and lists the environment variables the file reads (`{env: NAME}`), so
the deployment can provide them. Exit status 1 on any error; warnings (what could not be checked) do not fail.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

#: sections whose value is `{module, class, config}`
CLASS_SECTIONS = ("run_coordinator", "run_launcher", "compute_logs", "local_artifact_storage", "scheduler",
                  "run_storage", "event_log_storage", "schedule_storage", "secrets")
#: `storage:` shorthand → the class that reads it
STORAGE_CLASSES = {"postgres": ("dagster_postgres", "DagsterPostgresStorage"),
                   "mysql": ("dagster_mysql", "DagsterMySQLStorage"),
                   "sqlite": ("dagster._core.storage.sqlite_storage", "DagsterSqliteStorage")}


@dataclass
class Report:
    path: str
    env_vars: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    not_checked: list[str] = field(default_factory=list)  # class packages not installed here
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def env_vars(node: Any) -> Iterator[str]:
    if isinstance(node, Mapping):
        if set(node) == {"env"} and isinstance(node["env"], str):
            yield node["env"]
            return
        for value in node.values():
            yield from env_vars(value)
    elif isinstance(node, list):
        for value in node:
            yield from env_vars(value)


def _check_class(report: Report, label: str, module: str, cls_name: str, config: Any) -> None:
    from dagster._config import process_config
    from dagster._serdes.config_class import ConfigurableClassData

    module = ConfigurableClassData(module, cls_name, "").module_name  # maps legacy `dagster.core.*` paths
    try:
        klass = getattr(importlib.import_module(module), cls_name)
    except ImportError:
        report.not_checked.append(f"{label}: {module}.{cls_name} (package not installed)")
        return
    except AttributeError:
        report.errors.append(f"{label}: {module} has no class {cls_name}")
        return
    # env vars are resolved while processing: give placeholders to the ones that are not set
    missing = [v for v in env_vars(config) if v not in os.environ]
    placeholders = {v: "5432" if v.endswith("PORT") else "placeholder" for v in missing}
    old = {k: os.environ.get(k) for k in placeholders}
    os.environ.update(placeholders)
    try:
        result = process_config(klass.config_type(), config or {})
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if result.success:
        report.checked.append(f"{label}: {module}.{cls_name}")
    else:
        report.errors += [f"{label}: {e.message}" for e in result.errors]


def _env_value(value: Any) -> tuple[Any, str | None]:
    """(value, None) for a literal; (the variable's value or None, its name) for `{env: NAME}`."""
    if isinstance(value, Mapping) and set(value) == {"env"}:
        return os.environ.get(value["env"]), value["env"]
    return value, None


def _check_postgres_driver(report: Report, label: str, config: Any) -> None:
    """dagster-postgres works on psycopg2 only. With psycopg 3 — what SQLAlchemy 2.1 picks for a plain `postgresql`
    scheme, and what the `postgres` extra installs for the ledger — every event write fails (`NOTIFY run_events, $1`:
    psycopg 3 binds parameters server-side) and dagster-webserver's connections are closed by its statement-timeout
    hook (`with conn:` closes a psycopg 3 connection). So the URL must name the driver: `postgresql+psycopg2://`."""
    if not isinstance(config, Mapping):
        return
    if config.get("postgres_url") is not None:
        where, (url, env) = "postgres_url", _env_value(config["postgres_url"])
        scheme = url.split("://", 1)[0] if isinstance(url, str) and "://" in url else None
    elif isinstance(config.get("postgres_db"), Mapping):
        where = "postgres_db.scheme" if "scheme" in config["postgres_db"] else "postgres_db (no scheme: postgresql)"
        scheme, env = _env_value(config["postgres_db"].get("scheme", "postgresql"))
    else:
        return
    if env is not None and scheme is None:
        report.warnings.append(f"{label}: {where} comes from ${env}, not set here: it must start with "
                               "postgresql+psycopg2:// (dagster-postgres works on psycopg2 only)")
        return
    if not isinstance(scheme, str) or not scheme.startswith("postgresql"):
        return  # not a PostgreSQL URL: the storage itself reports it
    import sqlalchemy
    from sqlalchemy.engine import make_url

    try:
        driver = make_url(f"{scheme}://").get_driver_name()
    except Exception as exc:  # an unknown driver name
        report.errors.append(f"{label}: {where}: {exc}")
        return
    if driver == "psycopg2":
        report.checked.append(f"{label}: driver psycopg2 ({where})")
        return
    implied = "" if "+" in scheme else f" (SQLAlchemy {sqlalchemy.__version__} maps a plain {scheme}:// to it)"
    report.errors.append(f"{label}: {where} selects the {driver} driver{implied}; dagster-postgres works on psycopg2 "
                         f"only (run event writes fail on psycopg 3): write postgresql+psycopg2://, or "
                         f"`scheme: postgresql+psycopg2` under postgres_db")


def check_instance_file(path: str) -> Report:
    report = Report(path)
    try:
        with open(path, encoding="utf-8") as fh:
            doc = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as exc:
        report.errors.append(f"cannot read YAML: {exc}")
        return report
    if not isinstance(doc, dict):
        report.errors.append("the file is not a YAML mapping")
        return report
    report.env_vars = sorted(set(env_vars(doc)))
    from dagster._core.instance.config import dagster_instance_config

    home = tempfile.mkdtemp(prefix="sora-instance-check-")
    try:
        shutil.copy(path, os.path.join(home, "dagster.yaml"))
        dagster_instance_config(home)  # raises on a schema error
        report.checked.append("instance schema")
    except Exception as exc:  # DagsterInvalidConfigError and friends
        report.errors.append(f"instance schema: {exc}")
    finally:
        shutil.rmtree(home, ignore_errors=True)
    for section in CLASS_SECTIONS:
        value = doc.get(section)
        if isinstance(value, dict) and "module" in value and "class" in value:
            _check_class(report, section, value["module"], value["class"], value.get("config"))
            if str(value["module"]).startswith("dagster_postgres"):
                _check_postgres_driver(report, section, value.get("config"))
    storage = doc.get("storage")
    if isinstance(storage, dict):
        for kind, config in storage.items():
            if kind in STORAGE_CLASSES:
                _check_class(report, f"storage.{kind}", *STORAGE_CLASSES[kind], config)
            if kind == "postgres":
                _check_postgres_driver(report, f"storage.{kind}", config)
    return report


def main(argv: list[str] | None = None) -> int:
    paths = argv if argv is not None else sys.argv[1:]
    if not paths:
        print(__doc__)
        return 2
    status = 0
    for path in paths:
        r = check_instance_file(path)
        print(f"{path}: {'OK' if r.ok else 'INVALID'}")
        for line in r.checked:
            print(f"  checked      {line}")
        for line in r.not_checked:
            print(f"  not checked  {line}")
        for line in r.warnings:
            print(f"  WARNING      {line}")
        for line in r.errors:
            print(f"  ERROR        {line}")
        print(f"  env vars     {', '.join(r.env_vars) or '-'}")
        status |= 0 if r.ok else 1
    return status


if __name__ == "__main__":
    sys.exit(main())
