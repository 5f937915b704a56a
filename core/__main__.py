"""``python -m lineage_ledger`` runs the ``lineage-ledger`` command."""

from ._cli.main import main

main()
