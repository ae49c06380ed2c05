"""The one exception type that means "the user's input is wrong" (CLI exit code 2)."""


class UserError(Exception):
    """Bad config, missing file, missing column, unknown model: one clear line, exit 2.

    Raised before any output is written, so a failed command leaves nothing behind.
    """


class ServiceError(Exception):
    """A service the stage calls (an API engine's server, a tracker) failed for good, after its
    retries: one clear line on stderr, exit 1. Finished shards stay; a rerun resumes from them."""


# Exit code of a training command that ran out of (GPU) memory on any of its processes: the caller
# (the flow's stage runner) retries it with half the micro-batch and twice the accumulation.
EXIT_OUT_OF_MEMORY = 3


QUOTE_CHARS = 80  # the longest quote of a user's value in an error line


def quote(value: object, limit: int = QUOTE_CHARS) -> str:
    """repr(value) cut to `limit` characters: an error line never carries a whole input."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
