"""The one error the command line turns into exit status 2."""

from taskiq_dedup.errors import TaskiqDedupError

USAGE_ERROR = 2
"""Exit status of a command that could not run: bad ``APP:scheduler``, Redis unreachable."""


class CommandError(TaskiqDedupError):
    """A ``taskiq dedup`` command cannot run; the message names the culprit."""
