"""What a person at a terminal sees of a build: the build's own lines (progress, the
outcome, one-line errors), and not the libraries' logs.

TensorFlow and absl write banners straight to file descriptor 2 from C++, TFLite announces
its delegate there, and Beam logs warnings through Python's logging. While
:func:`quiet_output` is active, descriptor 2 and ``sys.stderr`` go to a log file instead,
and the build writes to the stream it yields. ``--verbose`` leaves everything as it is.
"""

from __future__ import annotations

import contextlib
import os
import sys


@contextlib.contextmanager
def quiet_output(log_path: str, enabled: bool = True):
    """Yields the stream for the build's own messages; everything else goes to
    ``log_path`` (appended) until the block ends."""
    if not enabled:
        yield sys.stderr
        return
    os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
    sys.stderr.flush()
    real_terminal = _writes_to_fd2(sys.stderr)
    console = os.fdopen(os.dup(2), "w", buffering=1) if real_terminal else sys.stderr
    saved_fd, saved_stderr = os.dup(2), sys.stderr
    with open(log_path, "a", buffering=1) as log:
        os.dup2(log.fileno(), 2)
        sys.stderr = log
        try:
            yield console
        finally:
            sys.stderr = saved_stderr
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            if real_terminal:
                console.close()


def _writes_to_fd2(stream) -> bool:
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError):  # a test's capture object
        return False
