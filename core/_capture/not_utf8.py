"""An engine's text that is not UTF-8 in a task's record: escaped, not lost.

An engine hands over what its tasks were given: a parameter taken from an environment
variable, a command line, a run id from ``LINEAGE_RUN_ID``. On Linux such text is bytes, and
where it is not UTF-8 Python holds lone surrogates (``surrogateescape``), which have no
canonical bytes: the record could not be encoded, and the task, which has run, was not
recorded. Such text is written in the escape of :func:`~.._environment.escaped_text` and named
in the record's ``extra["escaped"]`` (docs/guide.md).

Only a record that fails to encode is looked at (:func:`escape_if_needed`): its bytes are
worked out here, where they would be anyway, and kept with it, so other records cost nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._environment import ESCAPED, escaped_text, not_utf8
from .._model import Record

__all__ = ["escape_if_needed"]


def _holds(value: Any) -> bool:
    """Whether ``value`` (a JSON value) holds text that is not UTF-8, in a key or a string."""
    if isinstance(value, str):
        return not_utf8(value)
    if isinstance(value, Mapping):
        return any(not_utf8(k) or _holds(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds(v) for v in value)
    return False


def _escaped(value: Any) -> Any:
    """``value`` with every string in it, keys too, escaped."""
    if isinstance(value, str):
        return escaped_text(value)
    if isinstance(value, Mapping):
        return {escaped_text(k): _escaped(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_escaped(v) for v in value]
    return value


def _entries(values: Mapping[str, Any], prefix: str) -> tuple[dict[str, Any], list[str]]:
    """``values`` with each entry that holds text that is not UTF-8 escaped whole (its key and
    every string in its value), and the names of those entries, ``prefix`` before each. Where
    a key is escaped, every entry whose key holds a backslash is escaped too: an escaped key
    always holds one, so it cannot become the key of an entry left as it is."""
    touched = {k for k, v in values.items() if not_utf8(k) or _holds(v)}
    if any(not_utf8(k) for k in touched):
        touched |= {k for k in values if "\\" in k}
    if not touched:
        return dict(values), []
    result, names = {}, []
    for key, value in values.items():
        if key in touched:
            key = escaped_text(key)
            value = _escaped(value)
            names.append(prefix + key)
        result[key] = value
    return result, names


def escape_if_needed(record: Record) -> Record:
    """``record``, encoded (its bytes kept with it); where it holds text that is not UTF-8 (its
    task name, run id, a parameter or an ``extra`` entry), a copy with that text escaped and
    its names listed under ``extra["escaped"]``. A record that fails to encode for another
    reason is returned as it is (its encoding fails where it is recorded, as before)."""
    try:
        record.encode()
        return record
    except ValueError:
        pass
    names: list[str] = []
    fields: dict[str, Any] = {}
    for field in ("task_name", "run_id"):
        text = getattr(record, field)
        if not_utf8(text):
            fields[field] = escaped_text(text)
            names.append(field)
    parameters, escaped = _entries(record.parameters, "parameters.")
    names += escaped
    extra, escaped = _entries({k: v for k, v in record.extra.items() if k != ESCAPED}, "")
    names += escaped
    if not names:
        return record
    earlier = record.extra.get(ESCAPED)  # the engine's own list (lineage-ledger run's argv, cwd)
    if isinstance(earlier, list):
        names += [n for n in earlier if isinstance(n, str)]
    extra[ESCAPED] = sorted(set(names))
    data = record.to_dict()
    data.update(fields, parameters=parameters, extra=extra)
    data.pop("v")
    return Record._from_json_values(**{**data, "started": record.started, "ended": record.ended})
