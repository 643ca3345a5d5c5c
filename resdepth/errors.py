"""The one exception type for mistakes a user can fix; the CLI turns it into one line and exit code 2."""


class UserError(Exception):
    """Bad input: the message names the problem and the fix, and is shown without a traceback."""
