"""The tamper-evident log: records in blocks (chain), one Merkle tree over every record with
inclusion and consistency proofs (merkle, tree), signed checkpoints, the tree head this user
last verified (trust), verified reads and the full audit (verified, audit_parallel).

Depends only on the foundation modules; storage is a back-end's job.

Private: import public names from :mod:`lineage_ledger`.
"""
