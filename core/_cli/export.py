"""``lineage-ledger export`` and ``lineage-ledger graph``: standard exports and a picture.

The formats live in :mod:`lineage_ledger.exports`, imported only when a command runs, so
``lineage-ledger --help`` and ``import lineage_ledger`` stay light.
"""

from __future__ import annotations

import click

from .._errors import ConfigError
from .._ledger.identity import redact
from .._terminal import printable
from .common import ledger_option, refuse_not_a_directory, refuse_output_over
from .common import open_read_only as _open

__all__ = ["export", "graph"]

EXPORT_FORMATS = ("prov-json", "prov-n", "ro-crate", "openlineage")
GRAPH_FORMATS = ("html", "svg", "dot")


@click.command()
@click.argument("targets", nargs=-1)
@click.option("--run", "run_id", help="Export the records of this run (with TARGETs: only those of it).")
@click.option("-f", "--format", "fmt", type=click.Choice(EXPORT_FORMATS), required=True, help="What to write.")
@click.option("-o", "--output", type=click.Path(), help="The file to write (for ro-crate a new directory, or a .zip file).")
@click.option("--key", "keyfile", type=click.Path(dir_okay=False),
              help="ro-crate: sign the crate's checkpoint with this private key (lineage-ledger keygen).")
@click.option("--license", "license_", help="ro-crate: the data's license (a URL such as an SPDX one, or text).")
@click.option("--no-data", is_flag=True, help="ro-crate: describe the files without copying them into the crate.")
@click.option("--emit", "emit_url", help="openlineage: also POST the events to this Marquez-compatible URL "
              "(with $OPENLINEAGE_API_KEY, if set, as a Bearer token).")
@click.option("--namespace", default="lineage-ledger", show_default=True,
              help="openlineage: the namespace of jobs and datasets.")
@ledger_option
def export(targets, run_id, fmt, output, keyfile, license_, no_data, emit_url, namespace, ledger_url) -> None:
    """Export the lineage of TARGETs (or the records of --run RUN) as W3C PROV, a Workflow Run
    RO-Crate (Provenance Run Crate, verifiable offline with `verify-lineage --crate`) or
    OpenLineage run events.

    \b
    Examples:
      lineage-ledger export results/summary.csv --format prov-json -o summary.prov.json
      lineage-ledger export --run 2026-01-05 --format ro-crate -o crate/ --key lab.key
      lineage-ledger export --run 2026-01-05 --format openlineage --emit http://marquez:5000
    """
    from ..exports._select import select

    if output is None and not (fmt == "openlineage" and emit_url):
        raise click.UsageError("give -o PATH" + (" or --emit URL" if fmt == "openlineage" else ""))
    if emit_url and fmt != "openlineage":
        raise click.UsageError("--emit is for --format openlineage")
    if emit_url is not None:  # a mistyped URL is said before anything is written
        _check_emit_url(emit_url)
    if keyfile == "":  # "--key $KEY" with KEY unset: not an unsigned crate, as no --key would be
        raise ConfigError("--key: an empty path names no key file: give the private key's path, or no --key "
                          "for a crate whose checkpoint is not signed")
    if (keyfile or no_data or license_) and fmt != "ro-crate":
        raise click.UsageError("--key, --license and --no-data are for --format ro-crate")
    if output == "-" and fmt == "ro-crate":
        raise click.BadParameter("a crate is a directory or a .zip file, which standard output (-) cannot be: "
                                 "give a path", param_hint="-o")
    if output is not None:  # before anything is written: never over the ledger, the key or a target
        refuse_output_over(output, ledger_url, *([keyfile] if keyfile else []), *targets)
    refuse_not_a_directory(targets)  # out.txt/ is not out.txt
    try:
        with _open(ledger_url) as ledger, select(ledger, targets, run_id) as selection:
            # A run is read again by each pass (a page at a time), never held whole.
            if fmt in ("prov-json", "prov-n"):
                from ..exports._prov import write_prov
                from ..exports._select import members

                write_prov(selection, output, fmt, members(ledger, selection))
                what = f"{selection.count} task(s)"
            elif fmt == "ro-crate":
                from ..exports._rocrate import write_crate

                crate = write_crate(ledger, selection, output, keyfile=keyfile, with_data=not no_data,
                                    license=license_)
                what = f"{selection.count} task(s), {crate.files_copied} file(s) copied"
            else:
                from ..exports._openlineage import emit, events_for, write_events

                count = 0
                if output:
                    count = write_events(events_for(selection, namespace), output)
                if emit_url:
                    count = emit(events_for(selection, namespace), emit_url)
                what = f"{count} event(s)"
    except BrokenPipeError:  # the reader of -o - went away (`| head`): the CLI's guard exits 141
        raise
    except OSError as err:  # an output that cannot be written, a file that cannot be read
        raise ConfigError(f"{err.filename or output}: {err.strerror}") from err
    click.echo(f"exported {what} as {fmt}" + (f" to {_shown(output)}" if output else "")
               + (f", posted to {redact(emit_url, emit_url)}" if emit_url else ""), err=True)


def _check_emit_url(url: str) -> None:
    """Raise :class:`click.BadParameter` (exit 2) unless ``url`` is an http(s) URL with a
    host: requests reads ``htp://host`` as a relative path and says 'No scheme supplied' of
    its own ``api/v1/lineage``. The message never shows the URL's password."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is no number
    except ValueError as err:
        raise click.BadParameter(f"{printable(redact(url, url))}: {err}", param_hint="--emit") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise click.BadParameter(f"{printable(redact(url, url))} is not an http:// or https:// URL with a host "
                                 "(the OpenLineage endpoint, e.g. http://marquez:5000)", param_hint="--emit")


@click.command()
@click.argument("targets", nargs=-1)
@click.option("--run", "run_id", help="Draw the records of this run (with TARGETs: only those of it).")
@click.option("-f", "--format", "fmt", type=click.Choice(GRAPH_FORMATS), default="html", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="The file to write.")
@click.option("--group", type=click.Choice(["auto", "rule", "run", "none"]), default="auto", show_default=True,
              help="Fold the tasks of one rule (or run) into one box; auto folds past 300 nodes. Past "
                   "5,000 nodes only svg (folded) and dot (every node) are drawn.")
@ledger_option
def graph(targets, run_id, fmt, output, group, ledger_url) -> None:
    """Draw tasks and file versions as a DAG, each file coloured by its verification status
    (OK, MODIFIED, MISSING, broken). The HTML page is self-contained: open it offline, click
    a node to read its record."""
    from ..exports._select import select

    if not targets and run_id is None:
        raise ConfigError("name the files to draw (TARGET...) or a run (--run RUN)")
    refuse_output_over(output, ledger_url, *targets)  # before anything is written
    refuse_not_a_directory(targets)
    try:
        with _open(ledger_url) as ledger, select(ledger, targets, run_id) as selection:
            if fmt == "dot":  # text for Graphviz: streamed, a page of the run at a time
                from ..exports._graph_dot import write_dot

                nodes, edges = write_dot(ledger, selection, output)
            else:  # laid out here, every node held: refused past a bound, before any is loaded
                from ..exports._graph import build_graph, draw_large, too_big_to_draw, write_graph

                counts = too_big_to_draw(selection)
                if counts is not None:  # folded from the run read again, or refused
                    nodes, edges = draw_large(ledger, selection, output, fmt, group, counts)
                else:
                    model = build_graph(ledger, selection)
                    write_graph(model, output, fmt, group=group)
                    nodes, edges = len(model.nodes), len(model.edges)
    except BrokenPipeError:  # as in export
        raise
    except OSError as err:
        raise ConfigError(f"{err.filename or output}: {err.strerror}") from err
    click.echo(f"drew {nodes} node(s) and {edges} edge(s) to {_shown(output)}", err=True)


def _shown(output: str) -> str:
    """``-o`` as messages name it."""
    return "standard output" if output == "-" else printable(output)
