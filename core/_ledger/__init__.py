"""The ledger as users hold it: :class:`Ledger` and :func:`open_ledger` (a back-end, the
verified log, lineage queries), and recording into it write-behind: the durable local spool,
the :class:`Recorder` that ships it, and the spool-first path for the task path (deferred).

Built on :mod:`.._log` and :mod:`.._files`; knows nothing of engines or the CLI.

Private: import public names from :mod:`lineage_ledger`.
"""
