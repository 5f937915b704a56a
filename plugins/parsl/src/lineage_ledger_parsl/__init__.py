"""lineage-ledger for Parsl: record every task try, verify files before launch or reuse.

>>> from lineage_ledger_parsl import ParslLedger
>>> ledger = ParslLedger("sqlite:///lab.db", policy="strict", file_key="content")
>>> config = Config(executors=[ledger.wrap(HighThroughputExecutor(...))],
...                 memoizer=ledger.memoizer(checkpoint_mode="task_exit"))

See docs/parsl.md.
"""

from ._executor import LedgerExecutorMixin, wrap_executor
from ._memoizer import LedgerMemoizer
from ._session import ParslLedger
from ._staging import WorkerDigests, WorkerHashingStaging

__version__ = "0.1.0"

__all__ = [
    "LedgerExecutorMixin", "LedgerMemoizer", "ParslLedger", "WorkerDigests",
    "WorkerHashingStaging", "wrap_executor",
]
