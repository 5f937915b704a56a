"""Storage back-ends, chosen by URL scheme and imported only when used.

Built in: ``sqlite:///path`` (and plain paths), ``postgresql://...``, ``memory://name``,
``baash://host:port``, ``fabric:///path/to/profile.json``.
Third parties register a :class:`Backend` subclass under the ``lineage_ledger.backends``
entry-point group, named by the scheme they serve.
"""

from __future__ import annotations

import importlib
import inspect

from lineage_ledger._errors import ConfigError, MissingExtra, UnknownScheme

from ._base import Backend, ChainHead, IndexRow, Located, Role, redact

READABLE_SCHEMES = ("postgresql", "postgresql+psycopg")  # read without SQLAlchemy (psycopg 3)

__all__ = [
    "Backend", "ChainHead", "IndexRow", "Located", "Role", "backend_class", "open_backend", "redact", "split_url",
]

# scheme -> (module:class, extra that provides its dependencies or None)
_BUILTIN: dict[str, tuple[str, str | None]] = {
    "memory": ("lineage_ledger.backends.memory:MemoryBackend", None),
    # A writable SQLite ledger is appended to through sqlite3 (SQLAlchemy only to migrate).
    "sqlite": ("lineage_ledger.backends.sqlite:SQLiteBackend", None),
    "postgresql": ("lineage_ledger.backends.sql:SQLBackend", "postgres"),
    "baash": ("lineage_ledger.backends.baash:BaashBackend", "mpi"),
    "fabric": ("lineage_ledger.backends.fabric:FabricBackend", "fabric"),
}
ENTRY_POINT_GROUP = "lineage_ledger.backends"


def split_url(url: str) -> tuple[str, str]:
    """``(scheme, rest)``; a string with no ``://`` is a path to an SQLite file."""
    if not isinstance(url, str) or not url.strip():
        raise ConfigError("empty ledger URL; give a path or a URL such as sqlite:///ledger.db")
    if "://" not in url:
        if ":" in url.split("/")[0] and not url.startswith((".", "/")):
            raise ConfigError(
                f"malformed ledger URL {url!r}: expected scheme://..., e.g. sqlite:///ledger.db"
            )
        return "sqlite", url
    scheme, rest = url.split("://", 1)
    base = scheme.split("+", 1)[0].lower()
    if not base or not base.replace("-", "").replace(".", "").isalnum():
        raise ConfigError(f"malformed ledger URL {url!r}: bad scheme {scheme!r}")
    return base, rest


def backend_class(scheme: str) -> type[Backend]:
    if scheme in _BUILTIN:
        target, extra = _BUILTIN[scheme]
    else:
        from importlib.metadata import entry_points

        found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == scheme]
        if not found:
            known = sorted(set(_BUILTIN) | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})
            raise UnknownScheme(
                f"no ledger back-end for scheme {scheme!r}; known schemes: {', '.join(known)}"
            )
        target, extra = found[0].value, None
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        hint = f"pip install 'lineage-ledger[{extra}]'" if extra else f"install the package providing {module_name}"
        raise MissingExtra(
            f"the {scheme} back-end needs {exc.name!r}, which is not installed: {hint}"
        ) from exc
    cls = getattr(module, class_name)
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise ConfigError(f"{target} is not a lineage_ledger Backend")
    return cls


def _accepts_create(cls: type[Backend]) -> bool:
    try:
        parameters = inspect.signature(cls.__init__).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(
        (p.name == "create" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)) or p.kind is p.VAR_KEYWORD
        for p in parameters
    )


def open_backend(url: str, *, create: bool = True) -> Backend:
    """The back-end for ``url``. ``create=False`` (for commands that only read) asks it not
    to create, migrate or write anything: a missing ledger is :class:`NoLedger`. Back-ends
    whose constructor takes no ``create`` argument ignore it."""
    scheme, _ = split_url(url)
    if scheme != "sqlite":  # a SQLite ledger's path is refused where its file is worked out
        # Before anything connects (PostgreSQL's reader connected first, and failed on such a
        # URL with an unexpected encoding error).
        from lineage_ledger._ledger.identity import refuse_url_not_utf8

        refuse_url_not_utf8(url, url)
    if scheme == "sqlite" and not create:
        # Read-only SQLite without importing SQLAlchemy (most of a fresh reader's time).
        from ._sqlite_reader import SQLiteReader

        return SQLiteReader(url)
    if scheme == "postgresql" and not create and url.split("://", 1)[0].lower() in READABLE_SCHEMES:
        # Read-only PostgreSQL through psycopg alone, for the same reason.
        from ._pg_reader import PostgresReader

        return PostgresReader(url)
    cls = backend_class(scheme)
    if _accepts_create(cls):
        return cls(url, create=create)  # type: ignore[call-arg]
    return cls(url)
