"""Errors that entry points turn into one clear line and a non-zero exit."""


class DataError(Exception):
    """A data file is missing, malformed or inconsistent; the message names the file."""


class ConfigError(Exception):
    """Flags or settings that cannot work together."""


class DivergenceError(FloatingPointError):
    """A loss became NaN/inf; training stopped before saving, so the last good checkpoint stays."""
