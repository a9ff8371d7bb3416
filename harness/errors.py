"""One-line error text, the one owner of it: every message tlbench shows for a problem is one line (docs/cli.md),
whether it comes from a UsageError, a plugin's exception or a library's multi-line message."""
from __future__ import annotations

import re


def one_line(text: str) -> str:
    """``text`` with its lines joined by single spaces (blank lines and surrounding space dropped)."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def exception_line(exc: BaseException) -> str:
    """``TypeName: the message`` on one line, every line of the message kept (a plugin's error, pluggy's
    validation message: each line says something)."""
    return one_line(f"{type(exc).__name__}: {exc}") if str(exc).strip() else type(exc).__name__


def exception_summary(exc: BaseException) -> str:
    """``TypeName: first line of the message``: library errors such as the hub's span many lines, and only the
    first says what went wrong."""
    return f"{type(exc).__name__}: {first_line(exc)}" if str(exc).strip() else type(exc).__name__


def first_line(exc: BaseException) -> str:
    """The first non-empty line of the message, or the type's name when it is empty."""
    lines = [part.strip() for part in str(exc).splitlines() if part.strip()]
    return lines[0] if lines else type(exc).__name__


# C0 controls but tab and newline, DEL, C1 controls, lone surrogates, and the bidirectional overrides and isolates
# (which reorder what a terminal shows): never written raw to a terminal.
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` as a terminal shows it literally: each control character (an escape sequence's ESC, BEL, a
    carriage return, ...), lone surrogate or bidirectional override written as its Python escape (``\\x1b``,
    ``\\u202e``), so user text (a label, a file name, a setting) can neither move the cursor, retitle or clear the
    terminal nor fail to encode. Tab and newline are kept."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape", "backslashreplace").decode("ascii")
                            if not "\ud800" <= m.group() <= "\udfff" else f"\\u{ord(m.group()):04x}", str(text))
