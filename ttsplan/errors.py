"""The one exception type users see: a clear one-line message, printed by the CLI with exit code 1."""


class TTSPlanError(Exception):
    """Bad input or an environment problem the user can fix; str(err) is the whole message."""
