"""Values from records, made safe to print on a terminal (issue 15, item 5).

Task names, run ids, parameters and file names are written by whoever recorded them; a
terminal that receives them raw obeys the escape sequences inside (clear the screen, set
the window title, recolour, rewrite earlier lines) and reorders text around bidirectional
controls. :func:`printable` shows every such character as a visible escape instead:

* C0 controls U+0000-U+001F (newline and tab too: inside a value they would fake a line
  or a column), DEL U+007F and the C1 controls U+0080-U+009F (U+009B is a one-character
  CSI) as ``\\xNN``;
* the bidirectional controls U+061C, U+200E, U+200F, U+202A-U+202E, U+2066-U+2069, the
  line and paragraph separators U+2028 and U+2029, and lone surrogates (a non-UTF-8 file
  name decoded with ``surrogateescape``) as ``\\uNNNN``;
* a backslash as ``\\\\``, so that an escape in the output always means the character,
  never the same text typed into a name.

:func:`json_text` is ``json.dumps`` with ``ensure_ascii=True`` (so U+0080 and above,
U+0080-U+009F and the bidirectional controls included, are ``\\uNNNN``) and DEL escaped
too: JSON output may be read on a terminal as well.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["json_text", "printable"]

_BIDI = (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x2028, 0x2029)

_TABLE: dict[int, str] = {ord("\\"): "\\\\"}
_TABLE.update({code: f"\\x{code:02x}" for code in (*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0))})
_TABLE.update({code: f"\\u{code:04x}" for code in (*_BIDI, *range(0xD800, 0xE000))})
# A byte of a name the OS gave that is not UTF-8 (surrogateescape: the byte 0xNN is U+DCNN)
# shown as the byte, \xNN, as records keep it (docs/guide.md), not as the surrogate \udcNN.
_TABLE.update({code: f"\\x{code - 0xDC00:02x}" for code in range(0xDC80, 0xDD00)})


def printable(text: Any) -> str:
    """``text`` (made a ``str`` if it is not one) with every control, bidirectional
    control and backslash shown as a visible escape; printable text is unchanged."""
    if not isinstance(text, str):
        text = str(text)
    # Every character the table escapes but the backslash is one str.isprintable() refuses
    # (categories Cc, Cf, Cs, Zl, Zp): most text passes this test and is returned as it is.
    if text.isprintable() and "\\" not in text:
        return text
    return text.translate(_TABLE)


def json_text(value: Any, **options: Any) -> str:
    """``json.dumps(value, ensure_ascii=True, **options)``, with DEL as ``\\u007f``.

    A DEL can only be inside a JSON string there, so replacing it keeps the JSON valid.
    """
    options["ensure_ascii"] = True
    return json.dumps(value, **options).replace("\x7f", "\\u007f")
