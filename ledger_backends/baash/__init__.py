"""BAASH: the MPI-parallel ledger service of the SC'21 paper, rebuilt on our blocks.

``baash://host:port`` reaches a service started with
``lineage-ledger baash serve --ranks N --storage DIR --listen HOST:PORT``. The client
needs nothing beyond the core; the service needs the ``mpi`` extra (mpi4py, MPICH).
See ``docs/baash.md``.
"""

from .client import BaashBackend, BlockRejected

__all__ = ["BaashBackend", "BlockRejected"]
