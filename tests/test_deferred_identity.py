"""The spool-first path works out an SQLite ledger's identity without importing SQLAlchemy
(a third of a second every short engine task would pay), and gets SQLAlchemy's answer."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lineage_ledger import ConfigError
from lineage_ledger._ledger.deferred import _sql_identity, ledger_identity

URLS = ["sqlite:///x.db", "sqlite:///./sub/../y.db?timeout=3", "sqlite:///../z.db", "sqlite:////abs/w.db"]


@pytest.mark.parametrize("url", URLS)
def test_the_identity_is_the_one_sqlalchemy_gives(url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert ledger_identity(url) == (_sql_identity(url), None)


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "sqlite:///."])
def test_a_url_without_a_ledger_file_is_refused_alike(url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as ours:
        ledger_identity(url)
    with pytest.raises(ConfigError) as theirs:
        _sql_identity(url)
    assert str(ours.value) == str(theirs.value)


def test_no_sqlalchemy_is_imported(tmp_path):
    code = ("import sys; from lineage_ledger._ledger.deferred import ledger_identity; "
            "print(ledger_identity('sqlite:///l.db')[0]); print('sqlalchemy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["sqlite:///" + str(tmp_path.resolve() / "l.db"), "False"], out
