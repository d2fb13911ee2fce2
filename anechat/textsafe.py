"""Model output is untrusted text: on a terminal, control and escape sequences must not act."""

from __future__ import annotations

import re

# C0 controls except tab and newline, DEL, and C1 controls (U+0080–U+009F, which some terminals treat as CSI).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _visible(m: re.Match) -> str:
    c = ord(m.group())
    return f"^{chr(c + 64)}" if c < 0x20 else f"\\x{c:02x}"


def neutralize(text: str) -> str:
    """ESC becomes the two visible characters `^[`, so `\\x1b[2J` prints instead of clearing the screen."""
    return _CONTROL.sub(_visible, text)
