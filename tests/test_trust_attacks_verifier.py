"""The independent verifier (tests/independent/verifier.py, written from docs/verification.md
alone) against the product, where they disagreed (helper-122).

A record's times are ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in ASCII digits; the product refuses a
record whose time has other digits (it is not canonical). The independent verifier matched
times with ``\\d`` and read the date with ``strptime``, both of which take any Unicode digit
in the year and (for ``\\d``) the fraction: it proved a record the product refuses.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from blake3 import blake3

from lineage_ledger._model import Record
from tests.independent import verifier

VECTORS = Path(__file__).parent / "vectors" / "tree_blake3.json"
ARABIC_INDIC = str.maketrans("0123456789", "\u0660\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669")


@pytest.mark.parametrize("part", ["year", "fraction"])
def test_a_record_time_in_digits_other_than_ascii_fails_in_both(part):
    canonical = json.loads(VECTORS.read_text())["records"][0]["canonical"]
    ended = '"ended":"2026-01-01T00:00:01.000000Z"'
    assert ended in canonical
    year, rest = ended[:13], ended[13:]
    bent = canonical.replace(ended, year[:9] + year[9:].translate(ARABIC_INDIC) + rest if part == "year"
                             else ended[:-8] + ended[-8:-2].translate(ARABIC_INDIC) + ended[-2:])
    assert bent != canonical
    data = bent.encode()
    with pytest.raises(ValueError):  # the product: not a canonical record
        Record.decode(data)
    with pytest.raises(verifier.Invalid):
        verifier.check_record(data, blake3(data).hexdigest())
