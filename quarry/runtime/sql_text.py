"""SQL text as ClickHouse reads it: how many statements it holds, and errors on one line.

`quarry sql` runs one statement per request (the LogStore service refuses more), because
the two stores disagree on several: the embedded one runs them all and answers one
document per statement, a ClickHouse server refuses them ("Multi-statements are not
allowed"). Splitting knows ClickHouse's lexical rules for what may hide a ';': quoted
strings ('...' with backslash escapes and doubled quotes), quoted identifiers ("..." and
`...`), and comments (-- and # to the end of the line, /* ... */ nested).
"""

from __future__ import annotations

QUOTES = "'\"`"


def statements(sql: str) -> list[str]:
    """The statements of sql, each stripped; empty ones (a trailing ';') left out."""
    found: list[str] = []
    start, i, n = 0, 0, len(sql)
    while i < n:
        char = sql[i]
        if char in QUOTES:
            i = _end_of_quoted(sql, i)
        elif sql.startswith("--", i) or char == "#":
            i = _end_of_line(sql, i)
        elif sql.startswith("/*", i):
            i = _end_of_block_comment(sql, i)
        elif char == ";":
            found.append(sql[start:i])
            start, i = i + 1, i + 1
        else:
            i += 1
    found.append(sql[start:])
    return [text.strip() for text in found if _has_code(text)]


def error_line(message: str) -> str:
    """ClickHouse's message without its stack trace, on one line."""
    return " ".join(message.split("Stack trace:", 1)[0].split())


def _end_of_quoted(sql: str, i: int) -> int:
    quote, i = sql[i], i + 1
    while i < len(sql):
        if sql[i] == "\\":
            i += 2
        elif sql[i] == quote:
            if sql.startswith(quote, i + 1):  # a doubled quote is one quote character
                i += 2
            else:
                return i + 1
        else:
            i += 1
    return i


def _end_of_line(sql: str, i: int) -> int:
    end = sql.find("\n", i)
    return len(sql) if end < 0 else end + 1


def _end_of_block_comment(sql: str, i: int) -> int:
    depth, i = 1, i + 2
    while i < len(sql) and depth:
        if sql.startswith("/*", i):
            depth, i = depth + 1, i + 2
        elif sql.startswith("*/", i):
            depth, i = depth - 1, i + 2
        else:
            i += 1
    return i


def _has_code(text: str) -> bool:
    """Whether text holds more than whitespace and comments."""
    i = 0
    while i < len(text):
        if text[i].isspace():
            i += 1
        elif text.startswith("--", i) or text[i] == "#":
            i = _end_of_line(text, i)
        elif text.startswith("/*", i):
            i = _end_of_block_comment(text, i)
        else:
            return True
    return False
