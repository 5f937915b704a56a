"""``python -m lineage_ledger.backends.fabric endorsed-head|build-tree --ledger URL``."""

from .cli import fabric

fabric(prog_name="python -m lineage_ledger.backends.fabric")
