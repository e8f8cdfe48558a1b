"""Keep the notices TensorFlow and TFLite print from C++ off the terminal.

Importing TensorFlow writes absl lines to file descriptor 2 ("WARNING: All log messages
before absl::InitializeLog() ...", oneDNN, CUDA stubs, CPU features), whatever
TF_CPP_MIN_LOG_LEVEL says in TF 2.21, and every TFLite interpreter announces its XNNPACK
delegate there when it first allocates its tensors ("INFO: Created TensorFlow Lite XNNPACK
delegate for CPU."); LiteRT reads no setting for it. A search team's process (the query CLI,
a server) must not show them.

:func:`quiet_native_logs` sends descriptor 2 to a temporary file while a block runs, and
then writes back everything that is not one of those notices: errors, and whatever other
threads wrote meanwhile, arrive late, never lost. The build has its own, wider redirection
(pipelines/console.py).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading

# Notices, not problems: absl's INFO and WARNING lines and its preamble, TFLite's INFO
# lines, and the second line of TensorFlow's CPU-features notice.
NOTICE = re.compile(rb"^(WARNING: All log messages before absl::InitializeLog\(\)|"
                    rb"[IW]\d{4} [\d:.]+ +\d+ [\w./-]+:\d+\] |INFO: |"
                    rb"To enable the following instructions: .* rebuild TensorFlow|\s*$)")

# Descriptor 2 is one per process: one block redirects it at a time (nested blocks, in the
# same thread, write back into the enclosing block's file).
_LOCK = threading.RLock()


@contextlib.contextmanager
def quiet_native_logs():
    with _LOCK:
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile() as captured:
            os.dup2(captured.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                captured.seek(0)
                kept = [line for line in captured.read().splitlines(keepends=True)
                        if not NOTICE.match(line)]
                rest = b"".join(kept)
                while rest:
                    rest = rest[os.write(2, rest):]
