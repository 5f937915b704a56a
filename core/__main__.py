"""``python -m lineage_ledger`` runs the ``lineage-ledger`` command."""

from ._cli import main

main()
