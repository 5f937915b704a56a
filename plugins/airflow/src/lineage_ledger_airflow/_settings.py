"""The ``[lineage_ledger]`` options, read from Airflow's configuration at each use."""

from __future__ import annotations

import functools
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


def why_nothing_is_recorded() -> str | None:
    """Why no try can be recorded into the configured ledger, or None where it can: a ledger
    whose path (or URL) is not UTF-8 text, which the core refuses (a ledger is named by its
    path); the default one under an ``AIRFLOW_HOME`` whose name is not, say. Read without
    opening anything, so every hook can ask (worked out once per URL and process)."""
    return _why_for(ledger_url())


@functools.lru_cache(maxsize=8)
def _why_for(url: str) -> str | None:
    path = url[len("sqlite:///"):].split("?", 1)[0] if url.startswith("sqlite:///") else None
    if path is not None and (_not_utf8(path) or _not_utf8(os.path.realpath(path))):
        shown = os.path.abspath(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        return (f"the ledger {shown} is at a path that is not valid UTF-8 text, and a ledger is named by its path: "
                "set [lineage_ledger] url (AIRFLOW__LINEAGE_LEDGER__URL) to a ledger whose path is")
    if _not_utf8(url):  # not shown: a URL may hold a password
        return ("the ledger's URL ([lineage_ledger] url, AIRFLOW__LINEAGE_LEDGER__URL) is not valid UTF-8 text: "
                "set it to one that is")
    return None


def _not_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


_said: set[str] = set()
os.register_at_fork(after_in_child=_said.clear)  # a forked task process says it in its own log


def recording() -> bool:
    """Whether this process records tries: the plugin is enabled and its ledger can take
    records. Where it cannot (:func:`why_nothing_is_recorded`), this process says so once, at
    ERROR, and records nothing; the tasks run as they would without the plugin (a ``strict``
    check refuses them: :func:`._checks.check_inputs`)."""
    if not enabled():
        return False
    why = why_nothing_is_recorded()
    if why is None:
        return True
    if why not in _said:
        _said.add(why)
        log.error("lineage-ledger: nothing is recorded: %s", why)
    return False
