"""A produced file swapped for a symbolic link to other bytes, then read through the link.

A task that reads a path through a link is recorded with the real path and the path as given
(an alias of it). The lineage walk followed the real path only: a file a task produced,
replaced by a link to a copy with other bytes (a "source", since nothing produced it), passed
``verify-lineage`` of what was made from it, while the same edit made in place failed with
LineageBroken. Found by the outside review of Airflow's plugin (helper-64); here through the
CLI, about 2 s.
"""

from __future__ import annotations

import os

from tests.conftest import run_cli


def test_a_produced_file_swapped_for_a_link_to_other_bytes_breaks_the_lineage(tmp_path):
    run_cli("run", "-o", "raw.csv", "--", "sh", "-c", "echo a > raw.csv", cwd=tmp_path, check_rc=0)
    other = tmp_path / "other.csv"
    other.write_text("a\nb\n")
    (tmp_path / "raw.csv").unlink()
    os.symlink("other.csv", tmp_path / "raw.csv")
    run_cli("run", "-i", "raw.csv", "-o", "report.txt", "--", "sh", "-c", "cat raw.csv > report.txt",
            cwd=tmp_path, check_rc=0)
    result = run_cli("report.txt", cwd=tmp_path, program="verify-lineage")
    assert result.returncode == 1, result.stdout
    assert "LineageBroken" in result.stdout and "raw.csv: consumed as" in result.stdout, result.stdout


def test_a_link_to_the_version_the_task_produced_still_verifies(tmp_path):
    """The same link to the bytes the producer wrote (a copy made by a task, or the file
    moved and linked back) is that version: no failure."""
    run_cli("run", "-o", "raw.csv", "--", "sh", "-c", "echo a > raw.csv", cwd=tmp_path, check_rc=0)
    os.replace(tmp_path / "raw.csv", tmp_path / "moved.csv")
    os.symlink("moved.csv", tmp_path / "raw.csv")
    run_cli("run", "-i", "raw.csv", "-o", "report.txt", "--", "sh", "-c", "cat raw.csv > report.txt",
            cwd=tmp_path, check_rc=0)
    result = run_cli("report.txt", cwd=tmp_path, program="verify-lineage")
    assert result.returncode == 0, result.stdout
    assert "BROKEN" not in result.stdout, result.stdout
