"""``python -m lineage_ledger.backends.fabric``: the consortium's endorsed tree head.

``endorsed-head`` asks the endorsing peers for the ledger's tree head, proves their
signatures, and compares it with the tree this user verified from the records (exit 0 when
they agree, 1 when they do not or the endorsement does not prove itself, 2 for bad input or
an unreachable network). ``build-tree`` builds the tree once for a ledger begun by an older
chaincode. Exit statuses follow ``verify-lineage``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from lineage_ledger._errors import ConfigError, LedgerError, VerificationError

__all__ = ["fabric"]


def _guarded(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except VerificationError as err:
        click.echo(f"verification failed: {err}", err=True)
        sys.exit(1)
    except LedgerError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)


def _url(ledger: str | None) -> str:
    url = ledger or os.environ.get("LINEAGE_LEDGER_URL")
    if not url or not url.startswith("fabric://"):
        raise ConfigError("give a Fabric ledger: --ledger fabric:///path/to/profile.json (or LINEAGE_LEDGER_URL)")
    return url


@click.group(name="fabric")
def fabric() -> None:
    """The Hyperledger Fabric back-end: the tree head the consortium endorses."""


@fabric.command("endorsed-head")
@click.option("--ledger", "ledger_url", help="fabric:///path/to/profile.json[?ledger=NAME]")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def endorsed_head(ledger_url: str | None, as_json: bool) -> None:
    """Prove the peers' endorsement of the tree head and compare it with the verified tree."""
    from lineage_ledger import open_ledger

    from ._tree_head import check_endorsed_head

    def run() -> None:
        ledger = open_ledger(_url(ledger_url), read_only=True)
        try:
            endorsed, _root = check_endorsed_head(ledger)
        finally:
            ledger.close()
        if as_json:
            click.echo(json.dumps({"size": endorsed.size, "root": endorsed.root, "blocks": endorsed.blocks,
                                   "block_id": endorsed.block_id, "matches_verified_tree": True,
                                   "endorsers": [{"msp_id": e.msp_id, "subject": e.subject}
                                                 for e in endorsed.endorsers]}, sort_keys=True))
            return
        click.echo(f"endorsed tree head: {endorsed.size} records in {endorsed.blocks} blocks, root {endorsed.root}")
        for endorser in endorsed.endorsers:
            click.echo(f"  signed by {endorser.msp_id}: {endorser.subject}")
        click.echo("matches the tree verified from the records read here")

    _guarded(run)


@fabric.command("build-tree")
@click.option("--ledger", "ledger_url", help="fabric:///path/to/profile.json[?ledger=NAME]")
@click.option("--blocks-per-transaction", type=click.IntRange(1, 10_000), default=200, show_default=True)
def build_tree(ledger_url: str | None, blocks_per_transaction: int) -> None:
    """Build the log tree of a ledger begun by an older chaincode (once; appends keep it)."""
    from lineage_ledger.backends import open_backend

    def run() -> None:
        backend = open_backend(_url(ledger_url))
        try:
            blocks, records = backend.build_tree(blocks_per_transaction)  # type: ignore[attr-defined]
        finally:
            backend.close()
        if blocks:
            click.echo(f"built the log tree: {records} records in {blocks} blocks")
        else:
            click.echo("the ledger keeps its log tree already")

    _guarded(run)
