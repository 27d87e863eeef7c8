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


class SettingError(ValueError):
    """A component's setting is out of range, raised by that component's settings dataclass (`__post_init__`).

    A plain `ValueError` for code that builds components directly; it names the field relative to its dataclass
    (`buffer_size=0 ...`), and `kbk.config` turns it into a `ConfigError` naming the full key (`dmd.buffer_size`).
    """

    def __init__(self, owner: type, field: str, value: object, allowed: str) -> None:
        self.owner, self.field, self.value, self.allowed = owner, field, value, allowed
        super().__init__(f"{field}={value!r} is not allowed: it must be {allowed}")


def require(settings: object, field: str, ok, allowed: str) -> None:
    """Raise `SettingError` unless `ok(value)` holds for `settings.<field>` (an Enum counts by its value); a value
    of the wrong type (`ok` raising TypeError) is out of range too."""
    from enum import Enum

    value = getattr(settings, field)
    value = value.value if isinstance(value, Enum) else value
    try:
        good = bool(ok(value))
    except TypeError:
        good = False
    if not good:
        raise SettingError(type(settings), field, value, allowed)


def require_choice(settings: object, field: str, choices) -> None:
    """`settings.<field>` must be one of `choices` (an Enum class, whose member it becomes, or a tuple of str)."""
    from enum import Enum, EnumMeta

    value = getattr(settings, field)
    if isinstance(choices, EnumMeta):
        names = [c.value for c in choices]
        raw = value.value if isinstance(value, Enum) else value
        if raw not in names:
            raise SettingError(type(settings), field, raw, f"one of {', '.join(names)}")
        setattr(settings, field, choices(raw))
    elif value not in choices:
        raise SettingError(type(settings), field, value, f"one of {', '.join(choices)}")


def settings_or_fields(kind: type, config: object | None, given: dict) -> object:
    """`config`, or the settings dataclass `kind` built from its fields given as keywords (not both): how every
    component takes its settings (`StreamingDMD(16, DMDConfig(buffer_size=32))` or
    `StreamingDMD(16, buffer_size=32)`)."""
    if config is not None and given:
        raise TypeError(f"pass either a {kind.__name__} or its fields as keywords, not both")
    return config if config is not None else kind(**given)


def command_line(prog: str):
    """Decorates a CLI's `main(argv) -> int`: a `KbkError` becomes one line `<prog>: error: <message>` on stderr
    and exit status 2, never a traceback."""
    import functools
    import sys

    def decorate(main):
        @functools.wraps(main)
        def guarded(*args, **kwargs) -> int:
            try:
                return main(*args, **kwargs)
            except KbkError as exc:
                print(f"{prog}: error: {exc}", file=sys.stderr)
                return 2
        return guarded
    return decorate
