"""What the user can fix: the exceptions the CLI prints as one line (exit 2).

Everything raised for bad input derives from `InputError`: a config key or value, a dataset or
raw file, a run directory, a checkpoint, a path. The CLI also prints an OS error about a path
(permission, not a directory, disk full: `launch.cli.PATH_ERRNOS`) as one line. Any other
exception is a bug or a failure of the machine and keeps its traceback. Imports nothing of the
package.
"""
from __future__ import annotations


class InputError(Exception):
    """Bad input the user can fix; its message names the file or key and the problem."""


class ConfigError(InputError, ValueError):
    """A config file or override that cannot be applied (unknown key, wrong type or value)."""


class DatasetError(InputError, ValueError):
    """A dataset directory that is missing, incomplete or inconsistent."""


class RawInputError(InputError, ValueError):
    """A raw log file or `prepare` argument that cannot be read (names the file and line)."""


class RunError(InputError, ValueError):
    """A run directory that is missing, incomplete, or cannot take the command."""


class CheckpointError(InputError, ValueError):
    """A checkpoint that is missing, unreadable or of another format or config."""


class OutputExistsError(InputError, FileExistsError):
    """An output path that already holds something the command would replace."""


class DivergedError(InputError):
    """Training produced a non-finite loss: the settings (learning rate, loss weights) diverge."""


class ArgumentError(InputError, ValueError):
    """A command argument out of its range (a size, a count, a K)."""
