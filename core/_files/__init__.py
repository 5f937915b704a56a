"""Content digests of files and directories: BLAKE3 hashing with a stat cache, and the
manifests that give a directory one digest. Depends only on the foundation modules.

Private: import public names from :mod:`lineage_ledger`.
"""
