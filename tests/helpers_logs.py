"""Log lines a block of code wrote (the workflows report progress through absl logging, not stdout)."""

import contextlib
import logging


@contextlib.contextmanager
def captured_logs():
    """Yields a list that receives the message of every record logged at INFO or above in the block."""
    messages = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: messages.append(record.getMessage())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield messages
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
