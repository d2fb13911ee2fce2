"""Model output is untrusted text: on a terminal, control and escape sequences must not act, and bidi
controls must not reorder what is shown (a U+202E can make `exe.txt` read as `txt.exe`)."""

from __future__ import annotations

import re

# bidi embeddings/overrides (U+202A–U+202E), isolates (U+2066–U+2069) and the Arabic letter mark
_BIDI = "\u202a-\u202e\u2066-\u2069\u061c"
_UNSAFE = re.compile(f"[\\x00-\\x08\\x0b-\\x1f\\x7f-\\x9f{_BIDI}]")
# what JSON leaves raw that a terminal would act on (json.dumps escapes C0 itself)
_JSON_UNSAFE = re.compile(f"[\\x7f-\\x9f{_BIDI}]")


def _visible(m: re.Match) -> str:
    c = ord(m.group())
    if c < 0x20:
        return f"^{chr(c + 64)}"
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def neutralize(text: str) -> str:
    """ESC becomes the two visible characters `^[`, so `\\x1b[2J` prints instead of clearing the screen;
    C1 controls and bidi overrides/isolates become visible escapes."""
    return _UNSAFE.sub(_visible, text)


def json_safe(encoded: str) -> str:
    """JSON text (from json.dumps) with DEL, C1 controls and bidi controls written as \\uXXXX escapes: the
    same JSON value, but nothing a terminal acts on."""
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", encoded)
