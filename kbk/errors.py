"""User-facing errors: one message that names the cause and the fix.

Code raises `KbkError` (or a subclass) for anything a user can correct: bad config values, missing data, an
unreachable service, a corrupt checkpoint. The entrypoint prints the message alone (no traceback) and exits
non-zero; anything else is a bug and keeps its traceback.
"""


class KbkError(Exception):
    """An error caused by input the user can fix. The message says what is wrong and how to fix it."""


class ConfigError(KbkError):
    """A config value is out of range, of the wrong type, or unknown."""


class DataError(KbkError):
    """Data cannot be found, read, downloaded, or is too small for the requested setting."""


class CheckpointError(KbkError):
    """A checkpoint is missing, corrupt, or belongs to a different configuration."""


class TrackingError(KbkError):
    """The tracking store or server cannot be reached or used."""


class TrainingError(KbkError):
    """Training cannot go on (a diverging loss); the message names the step and the settings to change."""
