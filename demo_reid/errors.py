"""One-line error reasons: every entry point reports bad input in a single line, even when a library raised a
multi-line message."""

__all__ = ["first_line"]


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of ``exc``'s message (at most ``limit`` characters), or its type name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
