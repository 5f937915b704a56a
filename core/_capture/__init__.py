"""Capture for engines: :class:`TaskCapture` around one task, and the recording process
(process, child) that hashes and journals off the engine's critical path through a shared ring
and a pipe (ring, channel, drain). Built on :mod:`.._ledger`.

Private: import public names from :mod:`lineage_ledger`.
"""
