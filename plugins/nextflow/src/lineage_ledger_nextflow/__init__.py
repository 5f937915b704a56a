"""lineage-ledger for Nextflow: ``nextflow-ledger run PIPELINE ...`` records every task.

Nextflow is a Java program; this package never loads it. It runs the real ``nextflow``
command and reads only what Nextflow writes for its users: the trace file (one row per
task, written as each task ends), each task's work directory (``.command.sh``,
``.command.run``, ``.exitcode`` and the files there), and ``publishing file`` lines of its
log. See ``docs/nextflow.md``.
"""

__version__ = "0.1.0"
