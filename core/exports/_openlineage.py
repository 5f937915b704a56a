"""OpenLineage run events through ``openlineage-python``.

Each task is one OpenLineage run (START at its start, COMPLETE or FAIL at its end) of a
job named ``<engine>.<task name>``, with the files it read and wrote as input and output
datasets (namespace ``file``, name the absolute path: OpenLineage's naming for local
files). Every dataset carries the standard ``version`` facet (the BLAKE3 digest) and the
custom ``lineageLedger_blake3`` facet (digest, size and the record that saw it), whose
JSON schema is ``schemas/blake3-facet.json``. Tasks point at their workflow run through
the ``parent`` run facet; the workflow run has its own START and COMPLETE/FAIL events. The
custom ``lineageLedger_run`` run facet names the ledger's record (task id, attempt, status,
and the record's ``extra`` map as JSON text) of a task, or the ledger's run id of a workflow
run (``schemas/run-facet.json``).

A directory artifact is one dataset (its digest is the manifest's, docs/directories.md) with
the standard ``datasetType`` facet ``DIRECTORY``; a path through a symbolic link that names
the same version (an alias entry) is not a dataset of its own but an identifier of type
``SYMLINK`` in the standard ``symlinks`` facet of its real path's dataset.

Run ids are UUIDs derived from the record id (or the run id) and its time, so exporting
the same records twice gives the same events, and a receiver de-duplicates them.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from .._canonical import format_time
from .._errors import ConfigError
from .._ledger.identity import redact
from . import require
from ._names import extra_text
from ._output import open_output
from ._select import Selection, aliases_in, artifacts

__all__ = ["API_KEY", "FACET", "RUN_FACET", "RUN_SCHEMA_URL", "SCHEMA_URL", "emit", "events_for", "facet_class",
           "run_facet_class", "write_events"]

FACET = "lineageLedger_blake3"
SCHEMA_URL = "https://lineage-ledger.invalid/spec/facets/1-0-0/Blake3DatasetFacet.json#/$defs/Blake3DatasetFacet"
PRODUCER = "https://lineage-ledger.invalid/lineage-ledger"
RUN_FACET = "lineageLedger_run"
RUN_SCHEMA_URL = ("https://lineage-ledger.invalid/spec/facets/1-0-0/LineageLedgerRunFacet.json"
                  "#/$defs/LineageLedgerRunFacet")


@functools.lru_cache(maxsize=1)
def facet_class() -> type:
    """The custom dataset facet as an OpenLineage facet class (defined on first use, so
    that openlineage is imported only by this export)."""
    attr = require("attr", "openlineage-python")
    base = require("openlineage.client.generated.base", "openlineage-python")

    facet_base: Any = base.DatasetFacet

    @attr.define
    class Blake3DatasetFacet(facet_base):
        blake3: str
        size: int
        record: str

        @staticmethod
        def _get_schema() -> str:
            return SCHEMA_URL

    return Blake3DatasetFacet


def _time(moment: datetime) -> str:
    return format_time(moment)  # RFC 3339, UTC, microseconds


def _run_uuid(instant: datetime, key: str) -> str:
    uuid = require("openlineage.client.uuid", "openlineage-python")
    return str(uuid.generate_static_uuid(instant, key.encode("utf-8")))


def events_for(selection: Selection, namespace: str) -> Iterator[Any]:
    """START and COMPLETE/FAIL events for each workflow run, then for every selected task,
    made as they are asked for (a run of 100,000 tasks is never held as events)."""
    base = require("openlineage.client.generated.base", "openlineage-python")
    facets = require("openlineage.client.facet_v2", "openlineage-python")
    blake3_facet = facet_class()
    parents = {}
    # The workflow runs' events come first: their span and status are the selection's
    # summaries (one pass, made when it was selected), not a list of each run's tasks.
    for run_id, summary in selection.summaries.items():
        started, ended, engine = summary.started, summary.ended, summary.engine
        run_uuid = _run_uuid(started, f"run:{run_id}")
        job = base.Job(namespace=namespace, name=f"{engine}.run", facets={
            "jobType": facets.job_type_job.JobTypeJobFacet(processingType="BATCH", integration="LINEAGE_LEDGER",
                                                          jobType="DAG", producer=PRODUCER)})
        parents[run_id] = facets.parent_run.ParentRunFacet(
            run=facets.parent_run.Run(runId=run_uuid), job=facets.parent_run.Job(namespace=namespace, name=job.name),
            producer=PRODUCER)
        run_facets = {RUN_FACET: _run_facet(base, {"run_id": run_id})}
        yield base.RunEvent(eventType=base.EventType.START, eventTime=_time(started), producer=PRODUCER,
                            run=base.Run(runId=run_uuid, facets=run_facets), job=job)
        yield base.RunEvent(eventType=base.EventType.FAIL if summary.failed else base.EventType.COMPLETE,
                            eventTime=_time(ended), producer=PRODUCER,
                            run=base.Run(runId=run_uuid, facets=run_facets), job=job)
    for entry in selection.records():
        record = entry.record
        run_uuid = _run_uuid(record.started, f"record:{entry.id}")
        job = base.Job(namespace=namespace, name=f"{record.engine}.{record.task_name}", facets={
            "jobType": facets.job_type_job.JobTypeJobFacet(processingType="BATCH", integration="LINEAGE_LEDGER",
                                                          jobType="TASK", producer=PRODUCER)})
        task_facets: dict[str, Any] = {
            "parent": parents[record.run_id],
            "processing_engine": facets.processing_engine_run.ProcessingEngineRunFacet(
                version=str(record.environment.get(f"{record.engine}_version", "unknown")), name=record.engine,
                producer=PRODUCER),
            RUN_FACET: _run_facet(base, {"record": entry.id, "task_id": record.task_id,
                                         "attempt": record.attempt, "status": record.status,
                                         "extra": extra_text(record.extra) if record.extra else None}),
        }
        def dataset_facets(path: str, art: Any, given: dict[str, list[str]], record_id: str = entry.id) -> dict:
            found: dict[str, Any] = {
                "version": facets.dataset_version_dataset.DatasetVersionDatasetFacet(datasetVersion=art["blake3"],
                                                                                 producer=PRODUCER),
                FACET: blake3_facet(blake3=art["blake3"], size=art["size"], record=record_id, producer=PRODUCER),
            }
            if art.get("type") == "dir":
                found["datasetType"] = facets.dataset_type_dataset.DatasetTypeDatasetFacet(datasetType="DIRECTORY",
                                                                                           producer=PRODUCER)
            if given.get(path):
                found["symlinks"] = facets.symlinks_dataset.SymlinksDatasetFacet(identifiers=[
                    facets.symlinks_dataset.Identifier(namespace="file", name=alias, type="SYMLINK")
                    for alias in given[path]], producer=PRODUCER)
            return found

        given_in, given_out = aliases_in(record.inputs), aliases_in(record.outputs)
        inputs = [base.InputDataset(namespace="file", name=path, facets=dataset_facets(path, art, given_in))
                  for path, art in sorted(artifacts(record.inputs))]
        outputs = [
            base.OutputDataset(namespace="file", name=path, facets=dataset_facets(path, art, given_out), outputFacets={
                "outputStatistics": facets.output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
                    # a directory's file count is in its manifest record, not in this one
                    size=art["size"], fileCount=None if art.get("type") == "dir" else 1, producer=PRODUCER),
            }) for path, art in sorted(artifacts(record.outputs))
        ]
        start = base.RunEvent(eventType=base.EventType.START, eventTime=_time(record.started), producer=PRODUCER,
                              run=base.Run(runId=run_uuid, facets=task_facets), job=job, inputs=inputs)
        end_facets = dict(task_facets)
        if record.status == "failed":
            end_facets["errorMessage"] = facets.error_message_run.ErrorMessageRunFacet(
                message=f"{record.task_name} failed (recorded by lineage-ledger as record {entry.id})",
                programmingLanguage="unknown", producer=PRODUCER)
        end = base.RunEvent(
            eventType=base.EventType.FAIL if record.status == "failed" else base.EventType.COMPLETE,
            eventTime=_time(record.ended), producer=PRODUCER,
            # A failed task's outputs are what it left (recorded, as PROV and the crate say).
            run=base.Run(runId=run_uuid, facets=end_facets), job=job, inputs=inputs, outputs=outputs)
        yield start
        yield end


@functools.lru_cache(maxsize=1)
def run_facet_class() -> type:
    """The custom run facet naming the ledger's record (a task) or run (a workflow run), with a
    schema of its own (``schemas/run-facet.json``), not the core's generic RunFacet."""
    attr = require("attr", "openlineage-python")
    base = require("openlineage.client.generated.base", "openlineage-python")

    facet_base: Any = base.RunFacet

    @attr.define
    class LineageLedgerRunFacet(facet_base):
        run_id: str | None = None  # a workflow run's; None fields are not written
        record: str | None = None
        task_id: str | None = None
        attempt: int | None = None
        status: str | None = None
        extra: str | None = None  # the record's extra map as JSON text (._names.extra_text)

        @staticmethod
        def _get_schema() -> str:
            return RUN_SCHEMA_URL

    return LineageLedgerRunFacet


def _run_facet(base: Any, fields: dict[str, Any]) -> Any:
    """The ``lineageLedger_run`` facet of a task's run or a workflow run."""
    return run_facet_class()(producer=PRODUCER, **fields)


def to_json(event: Any) -> str:
    serde = require("openlineage.client.serde", "openlineage-python")
    return serde.Serde.to_json(event)


def _line(event: Any) -> str:
    """``to_json``'s text of the event (keys sorted); it was parsed and written again, a
    fifth of the export's time, to the same text."""
    serde = require("openlineage.client.serde", "openlineage-python")
    return json.dumps(serde.Serde.to_dict(event), sort_keys=True,
                      default=lambda o: f"<<non-serializable: {type(o).__qualname__}>>")


def write_events(events: Iterable[Any], path: str) -> int:
    """One event per line (JSON Lines), in the order a receiver should get them; how many."""
    written = 0
    with open_output(path) as handle:
        for event in events:
            handle.write(_line(event) + "\n")
            written += 1
    return written


API_KEY = "OPENLINEAGE_API_KEY"  # what OpenLineage's own clients read for a token


def emit(events: Iterable[Any], url: str) -> int:
    """POST every event to a Marquez-compatible endpoint (``URL/api/v1/lineage``); how many.

    ``$OPENLINEAGE_API_KEY``, when set, goes as ``Authorization: Bearer KEY``; a password in
    the URL as HTTP basic authentication (``requests`` does that). Neither is ever printed."""
    posted = 0
    http = require("openlineage.client.transport.http", "openlineage-python")
    key = os.environ.get(API_KEY) or None
    auth = http.ApiKeyTokenProvider({"api_key": key}) if key else http.TokenProvider({})
    # The endpoint is joined to the URL (urljoin): without a final '/', the URL's last part
    # was dropped (http://host/gw posted to http://host/api/v1/lineage).
    base = url if url.endswith("/") else url + "/"
    transport = http.HttpTransport(http.HttpConfig(url=base, timeout=10.0, retry={"total": 2}, auth=auth,
                                                   session=_session_not_redirected()))
    for event in events:
        try:
            response = transport.emit(event)
        except Exception as exc:  # noqa: BLE001 - requests' and HTTP errors become one message
            # Never the URL's password (requests may repeat the URL in its message) nor the key.
            said = redact(str(exc), url)
            raise ConfigError(f"{redact(url, url)} did not take the OpenLineage events: "
                              f"{said.replace(key, '***') if key else said}") from exc
        if getattr(response, "is_redirect", False):
            # Not followed: a 301/302/303 is followed with a GET and no body (an http:// URL
            # whose server moved to https:// said 'posted' while no event reached anyone), a
            # 307/308 posts the events to a host --emit does not name.
            where = redact(response.headers.get("Location", ""), url)
            raise ConfigError(f"{redact(url, url)} answered {response.status_code} with a redirect to "
                              f"{where.replace(key, '***') if key else where}; not followed (the events go only "
                              "where --emit says): give --emit the URL the server names")
        posted += 1
    return posted


def _session_not_redirected() -> Any:
    """A ``requests`` session that answers a redirect as it comes (``emit`` refuses it)."""
    import requests  # openlineage-python's own dependency, there when its transport is

    class NotRedirected(requests.Session):
        def request(self, method: Any, url: Any, *args: Any, **kwargs: Any) -> Any:
            kwargs["allow_redirects"] = False
            return super().request(method, url, *args, **kwargs)

    return NotRedirected()
