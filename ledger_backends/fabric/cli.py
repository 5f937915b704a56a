"""``python -m lineage_ledger.backends.fabric``: the consortium's endorsed tree head.

``endorsed-head`` asks the endorsing peers for the ledger's tree head, proves their
signatures, and compares it with the tree this user verified from the records (exit 0 when
they agree, 1 when they do not or the endorsement does not prove itself, 2 for bad input or
an unreachable network); ``--save`` keeps what they signed, which ``verify-endorsement``
checks again offline. ``build-tree`` builds the tree once for a ledger begun by an older
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
@click.option("--save", "save_path", type=click.Path(dir_okay=False),
              help="Also write what the peers signed to this file, for verify-endorsement (offline).")
def endorsed_head(ledger_url: str | None, as_json: bool, save_path: str | None) -> None:
    """Prove the peers' endorsement of the tree head and compare it with the verified tree."""
    from lineage_ledger import open_ledger

    from ._evidence import evidence, save
    from ._tree_head import check_endorsed_head

    def run() -> None:
        ledger = open_ledger(_url(ledger_url), read_only=True)
        try:
            endorsed, _root = check_endorsed_head(ledger)
            origin = ledger.tree_head().origin
            profile = ledger.backend.profile  # type: ignore[attr-defined]
        finally:
            ledger.close()
        if save_path:
            save(save_path, evidence(origin=origin, channel=profile.channel, chaincode=profile.chaincode,
                                     ledger=profile.ledger, size=endorsed.size, root=endorsed.root,
                                     proposal=endorsed.proposal, envelope=endorsed.endorsed))
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


def _ca_option(values: tuple[str, ...]) -> dict[str, list]:
    from cryptography import x509

    trust: dict[str, list] = {}
    for value in values:
        msp_id, _, path = value.partition("=")
        if not msp_id or not path:
            raise click.BadParameter(f"{value!r}: give MSP_ID=CA_CERT.pem", param_hint="--ca")
        try:
            with open(path, "rb") as handle:
                trust.setdefault(msp_id, []).extend(x509.load_pem_x509_certificates(handle.read()))
        except (OSError, ValueError) as exc:
            raise click.BadParameter(f"{path}: {exc}", param_hint="--ca") from exc
    return trust


@fabric.command("verify-endorsement")
@click.argument("evidence_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--ca", "cas", multiple=True, required=True, metavar="MSP_ID=PEM",
              help="A member organisation's root CA certificate (repeat for each organisation).")
@click.option("--quorum", type=click.IntRange(1), help="Organisations that must have signed (default: a majority of --ca).")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Write the endorsed head as a checkpoint, for verify-lineage --against.")
def verify_endorsement(evidence_file: str, cas: tuple[str, ...], quorum: int | None, output: str | None) -> None:
    """Check a tree head saved by endorsed-head --save, offline: who signed it and what."""
    from ._evidence import verify_evidence

    trust = _ca_option(cas)

    def run() -> None:
        try:
            with open(evidence_file, encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{evidence_file}: {exc}") from exc
        checkpoint, signers = verify_evidence(data, trust, quorum or len(trust) // 2 + 1)
        click.echo(f"endorsed by {', '.join(signers)} at {checkpoint.time}: {checkpoint.size} records, "
                   f"root {checkpoint.root.hex()}")
        if output:
            from lineage_ledger.exports._output import open_output  # never through a link planted at -o

            with open_output(output) as handle:
                handle.write(checkpoint.body())
            click.echo(f"checkpoint written to {output}")

    _guarded(run)
