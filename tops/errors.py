"""The one exception type that means "the user's input is wrong" (CLI exit code 2)."""


class UserError(Exception):
    """Bad config, missing file, missing column, unknown model: one clear line, exit 2.

    Raised before any output is written, so a failed command leaves nothing behind.
    """
