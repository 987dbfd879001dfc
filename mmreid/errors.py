"""Errors reported in one line: every entry point prints ``<script>: error: <reason>`` and exits with status 2 for
bad input, 1 for work that failed after its input was accepted, even when a library raised a multi-line message."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

__all__ = ["RunFailed", "UsageError", "first_line", "run_cli"]


class UsageError(Exception):
    """Bad command-line input or a file that cannot be used; its message is the one line the user reads."""


class RunFailed(Exception):
    """The input was accepted but the work did not complete (an exporter that cannot trace the model, a push the Hub
    refused, requests left without an answer); its message is the one line the user reads, the exit status is 1."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of ``exc``'s message (at most ``limit`` characters), or its type name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


def run_cli(main: Callable[[], object], prog: str, errors: tuple[type[BaseException], ...] = (),
            interrupted: str = "") -> int:
    """Run ``main``; a :class:`UsageError` (or one of ``errors``) becomes ``prog: error: <first line>``, status 2,
    a :class:`RunFailed` the same line with status 1;
    Ctrl-C becomes ``prog: interrupted (Ctrl-C)`` (plus ``interrupted``, what is kept), status 130 (128 + SIGINT),
    printed once per run under torchrun (by rank 0)."""
    try:
        main()
    except (UsageError, *errors) as exc:
        print(f"{prog}: error: {first_line(exc, 1000)}", file=sys.stderr)
        return 2
    except RunFailed as exc:
        print(f"{prog}: error: {first_line(exc, 1000)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if os.environ.get("RANK", "0") == "0":
            print(f"{prog}: interrupted (Ctrl-C){'; ' + interrupted if interrupted else ''}", file=sys.stderr)
        return 130
    return 0
