"""BAASH: the MPI-parallel ledger service of the SC'21 paper, rebuilt on our blocks.

``baash:///path/to/baash.sock`` reaches a service started on this machine with
``lineage-ledger baash serve --ranks N --storage DIR --socket /path/to/baash.sock``;
``baash+tls://host:port?ca=...&cert=...&key=...`` reaches its mutual-TLS listener
(``--listen``) from another node. The client
needs nothing beyond the core; the service needs the ``mpi`` extra (mpi4py, MPICH).
See ``docs/baash.md``.
"""

from .client import AccessDenied, BaashBackend, BlockRejected

__all__ = ["AccessDenied", "BaashBackend", "BlockRejected"]
