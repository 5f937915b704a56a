"""lineage-ledger for Nextflow: ``nextflow-ledger run PIPELINE ...`` records every task.

Nextflow is a Java program; this package never loads it. It runs the real ``nextflow``
command and reads only what Nextflow writes for its users: its log (task ends, retries,
cached tasks, published files, the session id) and each task's work directory
(``.command.sh``, ``.command.run``, ``.command.begin``, ``.exitcode`` and the files there).
See ``docs/nextflow.md``.
"""

__version__ = "0.1.0"
