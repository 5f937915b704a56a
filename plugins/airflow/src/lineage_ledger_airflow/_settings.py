"""The ``[lineage_ledger]`` options, read from Airflow's configuration at each use."""

from __future__ import annotations

import logging
import os

log = logging.getLogger("lineage_ledger.airflow")

POLICIES = ("warn", "strict", "rerun")


def _conf_get(key: str, fallback: str) -> str:
    try:
        from airflow.configuration import conf
    except ImportError:  # pragma: no cover - Airflow is a dependency of this package
        return os.environ.get(f"AIRFLOW__LINEAGE_LEDGER__{key.upper()}", fallback)
    try:
        return str(conf.get("lineage_ledger", key, fallback=fallback))
    except Exception:  # noqa: BLE001 - a broken config must not break a task
        log.exception("lineage-ledger: cannot read [lineage_ledger] %s; using %r", key, fallback)
        return fallback


def _airflow_home() -> str:
    return os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow")


def ledger_url() -> str:
    """The ledger's URL: an absolute default, since task processes' working directories vary."""
    url = _conf_get("url", "") or os.environ.get("LINEAGE_LEDGER_URL", "")
    return url or os.path.join(_airflow_home(), "lineage", "ledger.db")


def spool_root() -> str:
    spool = _conf_get("spool", "") or os.environ.get("LINEAGE_SPOOL", "")
    return spool or os.path.join(_airflow_home(), "lineage", "spool")


def default_policy() -> str:
    policy = _conf_get("policy", "warn").strip().lower() or "warn"
    if policy not in POLICIES:
        log.error("lineage-ledger: [lineage_ledger] policy = %r is not one of %s; using warn", policy, POLICIES)
        return "warn"
    return policy


def flush_timeout() -> float:
    raw = _conf_get("flush_timeout", "5")
    try:
        return max(0.0, float(raw))
    except ValueError:
        log.error("lineage-ledger: [lineage_ledger] flush_timeout = %r is not a number; using 5", raw)
        return 5.0


def enabled() -> bool:
    return _conf_get("enabled", "True").strip().lower() not in ("false", "0", "no", "off")
