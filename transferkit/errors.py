"""The exceptions every layer raises and the CLI turns into one `transferkit: error: ...` line.

They live at the bottom so that the file-store, data and config layers can raise them without
importing each other; `transferkit.config.ConfigError` and `transferkit.data.DataError` remain the
public spellings."""


class ConfigError(ValueError):
    """A bad option, recipe or flag combination; the message names the flag and the fix."""


class DataError(ValueError):
    """Bad input data; the message names the file/field and the fix."""


class CheckpointError(ValueError):
    """A run file (weights, checkpoint, state) that is missing, damaged or not what it claims."""
