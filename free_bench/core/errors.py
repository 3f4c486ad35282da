"""One exception type for bad input, so the CLI can print a clear message and exit non-zero."""


class FreeBenchError(Exception):
    """Bad input or an unmet precondition; the message names the bad thing and how to fix it."""


def check_choice(kind: str, value: str, valid: list[str] | tuple[str, ...]) -> str:
    """Return `value` if it is one of `valid`, else raise an error that lists the valid names."""
    if value not in valid:
        raise FreeBenchError(f"unknown {kind} {value!r}; valid {kind}s: {', '.join(sorted(valid))}")
    return value
