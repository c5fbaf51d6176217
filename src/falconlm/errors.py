"""The one exception type users see: a clear sentence, never a traceback."""


class FalconError(Exception):
    """A user-facing error whose message names the problem in one sentence."""
