"""Bad input, reported in one line: every entry point prints ``<script>: error: <reason>`` and exits with status 2,
even when a library raised a multi-line message."""

from __future__ import annotations

import sys
from collections.abc import Callable

__all__ = ["UsageError", "first_line", "run_cli"]


class UsageError(Exception):
    """Bad command-line input or a file that cannot be used; its message is the one line the user reads."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of ``exc``'s message (at most ``limit`` characters), or its type name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


def run_cli(main: Callable[[], object], prog: str, errors: tuple[type[BaseException], ...] = ()) -> int:
    """Run ``main``; a :class:`UsageError` (or one of ``errors``) becomes ``prog: error: <first line>``, status 2."""
    try:
        main()
    except (UsageError, *errors) as exc:
        print(f"{prog}: error: {first_line(exc, 1000)}", file=sys.stderr)
        return 2
    return 0
