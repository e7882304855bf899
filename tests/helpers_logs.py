"""Log lines a block of code wrote (the workflows report progress through absl logging, not stdout)."""

import contextlib
import logging

from absl import logging as absl_logging


@contextlib.contextmanager
def captured_logs():
    """Yields a list that receives the message of every record logged at INFO or above in the block.

    absl's verbosity is process state: an earlier in-process command (the CLI tests run `main`s) may have
    left it at WARNING, which would drop the INFO records before any handler sees them, so the block runs
    at INFO and the previous verbosity is restored after it."""
    messages = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: messages.append(record.getMessage())
    root = logging.getLogger()
    level = root.level
    verbosity = absl_logging.get_verbosity()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    absl_logging.set_verbosity(absl_logging.INFO)
    try:
        yield messages
    finally:
        absl_logging.set_verbosity(verbosity)
        root.removeHandler(handler)
        root.setLevel(level)
