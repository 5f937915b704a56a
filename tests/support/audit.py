"""Watching which way an audit went, without changing it."""

from __future__ import annotations

from lineage_ledger._log import audit_parallel


def watch_workers(monkeypatch) -> list[tuple[object, int]]:
    """Every call of the workers' results (the real ones run), as (the back-end they read
    through, how many ranges): empty if the audit never started workers."""
    calls: list[tuple[object, int]] = []
    real = audit_parallel.results

    def watched(backend, tasks, *, files, **options):
        calls.append((backend, len(tasks)))
        return real(backend, tasks, files=files, **options)

    monkeypatch.setattr(audit_parallel, "results", watched)
    return calls
