"""Errors that entry points turn into one clear line and a non-zero exit."""

import re


class DataError(Exception):
    """A data file is missing, malformed or inconsistent; the message names the file."""


class ConfigError(Exception):
    """Flags or settings that cannot work together."""


class DivergenceError(FloatingPointError):
    """A loss became NaN/inf; training stopped before saving, so the last good checkpoint stays."""


OS_FAULTS = ("No space left on device", "Disk quota exceeded", "Read-only file system", "Permission denied",
             "Input/output error")


def _op_error_text(error: Exception) -> str:
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
    return re.sub(r"\s*\[Op:\w+\]\s*$", "", text)


def op_error_reason(error: Exception) -> str:
    """The readable part of a TensorFlow op error: TensorFlow wraps the OS's reason in a function
    name, an internal temporary path and an op tag ('{{function_node ...}} x_temp/part...; No space
    left on device [Op:SaveV2]'), none of which tells a user what went wrong."""
    text = _op_error_text(error)
    for fault in OS_FAULTS:
        if fault in text:
            return fault
    return text[:200]


def op_error_line(error: Exception) -> str:
    """'<file>: <OS reason>' for an op error about a file (the file without TensorFlow's temporary suffix)."""
    text, reason = _op_error_text(error), op_error_reason(error)
    head = text.split(";")[0].strip() if ";" in text else ""
    path = re.sub(r"_temp[^/]*/.*$|\.tempstate\d+$", "", head)
    return f"{path}: {reason}" if path and path != reason else reason


def tensorflow_oom(error: BaseException) -> str:
    """TensorFlow's 'OOM when allocating tensor with shape[...]' in an error or in the errors it was
    raised from ('' if none)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        found = re.search(r"OOM when allocating tensor with shape\[[^\]]*\]", str(error))
        if found:
            return found.group(0)
        error = error.__cause__ or error.__context__
    return ""
