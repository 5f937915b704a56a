"""The keys of a record's ``extra`` that say part of what its task read, or wrote, was never
hashed, so that the ledger does not vouch for it:

- ``links_not_followed`` (and ``links_not_followed_more``, how many more): a Nextflow task's
  links out of a staged directory, to a directory or to nothing, not followed; what the task
  read through them is in no record (docs/nextflow.md);
- ``not_verified`` (and ``check_failed``): the files a ledger that failed its own check could
  not vouch for, left out of the record (Parsl, Snakemake, Airflow, Nextflow under ``warn``).

A lineage's slim summary of a producer keeps them (``_ledger.lineage.producer_summary``), so
that ``verify-lineage`` and ``why`` of what such a task made can say so
(``_verification.report.not_verified_in``). Their digests (``not_verified_digests``) are not
kept: a summary stays small.
"""

from __future__ import annotations

__all__ = ["NOT_VERIFIED_KEYS"]

NOT_VERIFIED_KEYS = ("links_not_followed", "links_not_followed_more", "not_verified", "check_failed")
