"""The local runner: Beam 2.77.0's FnApiRunner, with one gap closed.

Gap: in ``direct_running_mode=multi_threading`` the FnApiRunner runs its SDK workers in
process behind ``EmbeddedPythonGrpcEnvironment.default()``, whose worker handler falls back
to ``worker_handlers.DATA_BUFFER_TIME_LIMIT_MS`` (1,000 ms): every output stream of a bundle
is then a ``data_plane.TimeBasedBufferingClosableOutputStream``, flushed once a second by a
timer thread. That flush takes the buffer (``get()``) and empties it (``_clear()``) while the
bundle's own thread goes on encoding elements into it, with no lock between the two. Any
bundle that runs longer than a second can therefore lose the bytes written in between, or
send half an element whose other half follows in the next message. Measured on a 20-line
pipeline (``tests/test_local_runner.py``): 200,000 elements out of a one-element ``Create``
arrive as 199,128-199,448; a ``Flatten`` into ``GroupByKey`` decodes the torn stream into
garbage and grows to 24 GB in a minute. The nightly build hit it as an out-of-memory kill
at 20,000 items (issue 13). Short bundles, the test suite's, never see it.

Fix: embedded workers flush by size only (10 MB, Beam's own threshold), as Dataflow's and
every other SDK harness does by default (``data_buffer_time_limit_ms`` 0). The timer only
matters for streaming latency; a batch build loses nothing by waiting for the size
threshold or the end of the bundle.
"""

from __future__ import annotations

import ctypes
import ctypes.util

from apache_beam.runners.portability.fn_api_runner import FnApiRunner, worker_handlers

# Longer than any bundle lives: the timer thread never fires (about 24.8 days).
_NEVER_MS = 2 ** 31 - 1
_M_ARENA_MAX, _ARENAS = -8, 2  # glibc's mallopt parameter, and the arenas we allow


def return_freed_memory() -> None:
    """Allocators that keep what a build frees keep it for the whole build, as resident
    memory: glibc gives each new thread a malloc arena of its own (up to 8 per core, and a
    build runs dozens of threads), and Arrow's mimalloc pool holds freed segments. Two
    arenas, and Arrow on the system allocator."""
    import pyarrow

    pyarrow.set_memory_pool(pyarrow.system_memory_pool())
    try:
        ctypes.CDLL(ctypes.util.find_library("c")).mallopt(_M_ARENA_MAX, _ARENAS)
    except (OSError, AttributeError, TypeError):
        pass  # not glibc


class LocalRunner(FnApiRunner):
    """The FnApiRunner with its embedded workers' timed flush switched off, grouped values
    read by the workers page by page, and freed memory given back."""

    def __init__(self, **kwargs):
        # A GroupByKey's output is otherwise sent to the worker whole, before the first
        # group is processed, and held there in several copies (encoded, in gRPC messages,
        # decoded): about 35 KB per item of the catalog at the shard stage. Paged through
        # the state API, as Dataflow pages large groups, a worker holds the group it reads.
        kwargs.setdefault("use_state_iterables", True)
        super().__init__(**kwargs)

    def run_pipeline(self, pipeline, options):
        # Read by EmbeddedGrpcWorkerHandler when it starts a worker for this pipeline.
        worker_handlers.DATA_BUFFER_TIME_LIMIT_MS = _NEVER_MS
        return_freed_memory()
        return super().run_pipeline(pipeline, options)
