"""One error path for every command: bad input -> `error: <where>: <what and how to fix>`, exit code 2.

Every entry point (train, merge, export, encode, evaluate, experiments, dry_run) runs its absl main
through `run(main)` (or wraps it with `guard(main)`): the project's own errors (classes defined in
boom_jax, e.g. ConfigError, DataError, ModelFolderError, and ValueErrors the project's code raises
with a message for the user), the expected OS errors (missing path, permission denied, read-only
file system, disk full, existing output) and flag errors become ONE line on stderr and exit code 2.
Anything else is a bug and keeps its traceback (exit code 1).

A traceback for an expected error too: `--verbosity=1` (absl's flag, also `-v 1`) or the
environment variable BOOM_JAX_TRACEBACK=1.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import sys
import traceback
from typing import Any, Callable, Sequence

from absl import app, flags
from absl import logging as absl_logging

EXIT_BAD_INPUT = 2
TRACEBACK_ENV = "BOOM_JAX_TRACEBACK"
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_CONFIGS_DIR = os.path.join(os.path.dirname(_PACKAGE_DIR), "configs")

# errno -> what to do about it (the OS message says what happened).
_OS_HINTS = {
    errno.ENOENT: "check the path",
    errno.EEXIST: "choose another path, or pass --overwrite where the command has it",
    errno.EACCES: "check the permissions, or choose a writable folder",
    errno.EPERM: "check the permissions, or choose a writable folder",
    errno.EROFS: "the file system is read-only; choose a writable folder",
    errno.ENOSPC: "the disk is full; free space or choose another folder (nothing was published)",
    errno.EDQUOT: "the disk quota is exceeded; free space or choose another folder",
    errno.ENOTDIR: "a folder was expected",
    errno.EISDIR: "a file was expected",
}


def _project_class(err: BaseException) -> bool:
    return any(c.__module__.split(".")[0] in ("boom_jax", "configs") for c in type(err).__mro__[:-2])


def _raised_by_project(err: BaseException) -> bool:
    """Whether the innermost frame of the error's traceback is project code (its message is ours)."""
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    filename = os.path.abspath(tb.tb_frame.f_code.co_filename)
    return filename.startswith((_PACKAGE_DIR + os.sep, _CONFIGS_DIR + os.sep)) and not filename.endswith("cli.py")


def is_bad_input(err: BaseException) -> bool:
    """Errors that describe the user's input (reported in one line), as opposed to bugs."""
    if isinstance(err, (app.UsageError, flags.Error)):
        return True
    if isinstance(err, OSError):
        return err.errno in _OS_HINTS or isinstance(err, (FileNotFoundError, FileExistsError, PermissionError))
    if _project_class(err):
        return True
    return isinstance(err, (ValueError, KeyError)) and _raised_by_project(err)


def one_line(text: str) -> str:
    """The message on one line: line breaks become "; ", runs of blanks collapse."""
    parts = [" ".join(line.split()) for line in str(text).splitlines()]
    return "; ".join(p for p in parts if p)


def describe(err: BaseException) -> str:
    """The one-line message of a bad-input error (without the `error: ` prefix)."""
    if isinstance(err, OSError) and err.filename is not None:
        where = os.fspath(err.filename)
        if err.filename2 is not None:
            where += f" -> {os.fspath(err.filename2)}"
        what = err.strerror or str(err)
        hint = _OS_HINTS.get(err.errno)
        return one_line(f"{where}: {what}" + (f"; {hint}" if hint else ""))
    if isinstance(err, KeyError) and err.args and isinstance(err.args[0], str):
        return one_line(err.args[0])
    message = str(err) or type(err).__name__
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        message += f"; {_OS_HINTS[errno.ENOSPC]}"
    return one_line(message)


def traceback_wanted() -> bool:
    """--verbosity >= 1 (once flags are parsed) or BOOM_JAX_TRACEBACK=1."""
    if os.environ.get(TRACEBACK_ENV, "").strip().lower() in ("1", "true", "yes"):
        return True
    f = flags.FLAGS
    return "verbosity" in f and f.is_parsed() and f["verbosity"].present and f.verbosity >= 1


def report(err: BaseException) -> int:
    """Prints the error's line to stderr (its traceback first when wanted); returns the exit code."""
    if traceback_wanted():
        traceback.print_exception(type(err), err, err.__traceback__, file=sys.stderr)
    sys.stderr.write(f"error: {describe(err)}\n")
    sys.stderr.flush()
    return exit_code(err)


def exit_code(err: BaseException) -> int:
    """2 for bad input; a project error may declare another (`exit_code = 1`: the run failed)."""
    return int(getattr(err, "exit_code", EXIT_BAD_INPUT))


def guard(main: Callable[[Sequence[str]], Any]) -> Callable[[Sequence[str]], Any]:
    """`main` whose bad-input errors print one line and exit with code 2 (SystemExit(2))."""
    @functools.wraps(main)
    def wrapped(argv: Sequence[str]) -> Any:
        try:
            return main(argv)
        except BaseException as err:  # noqa: B902 - sorted into bad input and bugs just below
            if isinstance(err, (SystemExit, KeyboardInterrupt)) or not is_bad_input(err):
                raise
            report(err)
            raise SystemExit(exit_code(err)) from None

    return wrapped


def _config_load_error(flag_values: flags.FlagValues) -> BaseException | None:
    """The error a config-file flag met while loading (ml_collections defers it to first use)."""
    for name in list(flag_values):
        value = flag_values[name].value
        if type(value).__name__ == "_ErrorConfig":
            return getattr(value, "_error", None) or ValueError(f"--{name}: cannot load the config file")
    return None


def _innermost_message(text: str) -> str:
    """The message of the innermost exception in a multi-line flag error (config files embed their
    traceback in it), else the text on one line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        head, sep, rest = line.partition(": ")
        if sep and head.replace(".", "").isidentifier() and head.split(".")[-1].endswith(("Error", "Exception")):
            return rest
    return one_line(text)


def _unknown_override(argv: Sequence[str], err: BaseException) -> str | None:
    """For ml_collections' error on an override of an unknown key (`--config.data.nope=1` -> a KeyError
    'nope', possibly inside an AttributeError): the message naming the whole key, e.g. "config.data.nope
    is not a known key"; None for any other error."""
    inner = err.args[0] if isinstance(err, AttributeError) and err.args and isinstance(err.args[0], KeyError) else err
    if not isinstance(inner, KeyError):
        return None
    text = inner.args[0] if inner.args and isinstance(inner.args[0], str) else ""
    key, _, hint = text.partition("\n")  # ml_collections may add 'Did you mean "x" instead of "y"?'
    key = key.strip("'\"")
    for arg in argv:
        name = arg.split("=", 1)[0].lstrip("-")
        if key and "." in name and name.rsplit(".", 1)[-1] == key:
            return f"{name} is not a known key (--{name})" + (f"; {hint.strip()}" if hint.strip() else "")
    return None


def parse_flags(argv: Sequence[str], flag_values: flags.FlagValues | None = None) -> list[str]:
    """absl's flag parsing with bad flags (and config files that fail to load) as one line + exit 2."""
    flag_values = flag_values or flags.FLAGS
    try:
        rest = flag_values(list(argv))
    except (flags.Error, KeyError, ValueError, TypeError, AttributeError, OSError) as err:
        # all from the command line (ml_collections raises KeyError / AttributeError for a bad override)
        unknown = _unknown_override(argv, err)
        message = unknown or (describe(err) if isinstance(err, (KeyError, OSError)) else _innermost_message(str(err)))
        sys.stderr.write(f"error: {message}\n")
        raise SystemExit(EXIT_BAD_INPUT) from None
    load_error = _config_load_error(flag_values)
    unknown = _unknown_override(argv, load_error) if load_error is not None else None
    if unknown is not None:
        sys.stderr.write(f"error: {unknown}\n")
        raise SystemExit(EXIT_BAD_INPUT)
    if load_error is not None:
        message = str(load_error)
        if "No such file or directory" in message or isinstance(load_error, FileNotFoundError):
            names = [a.split("=", 1)[1].split(":")[0] for a in argv if a.startswith("--config=")]
            message = f"{names[0] if names else '--config'}: no such config file; pass --config=configs/NAME.py[:ARG]"
        sys.stderr.write(f"error: {_innermost_message(message)}\n")
        raise SystemExit(EXIT_BAD_INPUT)
    return rest


def check_arguments(argv: Sequence[str], flag_values: flags.FlagValues, *required: str) -> None:
    """Usage errors (one line, exit 2) for positional arguments after the program name and for each
    flag in `required` left empty."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    for name in required:
        if not getattr(flag_values, name):
            raise app.UsageError(f"--{name} is required")


def _project_or_warning(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or os.path.abspath(record.pathname).startswith(_PACKAGE_DIR + os.sep)


def quiet_dependencies(flag_values: flags.FlagValues) -> None:
    """Unless --verbosity was given: the project's own INFO lines (the workflows' progress and summaries,
    the loop's resume notes) and every warning, but not the dependencies' INFO (Orbax logs every save)."""
    if "verbosity" in flag_values and flag_values["verbosity"].present:
        return
    absl_logging.set_verbosity(absl_logging.INFO)
    absl_logging.get_absl_handler().addFilter(_project_or_warning)


def run(main: Callable[[Sequence[str]], Any]) -> None:
    """app.run(main) with one-line bad-input errors and exit code 2 (flags and main alike)."""
    app.run(guard(main), flags_parser=parse_flags)
