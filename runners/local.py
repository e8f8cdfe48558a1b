"""The local runner: Beam 2.77.0's FnApiRunner, with two gaps closed.

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

The second gap is memory. The runner shuffles in memory: a GroupByKey's values are held
decoded until the last bundle that feeds them ends, and at the shard stage that is every
item's vector. Three things made it hold them several times over (100,000 items, 5.7 KB
each: +1.15 GB in the 20 s after the last image):

- ``GroupingBuffer.partition`` encodes the whole decoded table into one stream per worker,
  copies each stream, and only then frees the table. ``GroupByGroupBuffer`` encodes one
  group at a time and drops its decoded values as soon as they are encoded.
- The freed values are millions of small blocks that glibc keeps as resident memory;
  :func:`trim_freed_memory` hands their pages back as partitioning goes.
- With ``use_state_iterables`` the runner stores each group's values as one state entry,
  and a worker reads it as one gRPC message (a whole shard, copied several times on the
  way). ``PagedExecutionContext`` stores them in pages of ``STATE_PAGE_BYTES``, and
  ``PagedStateServicer`` answers with one page and a continuation token for the next, so
  a worker reads one page at a time, as Dataflow's shuffle pages large groups. (Beam's own
  continuation tokens, switched on for every state, cost each of the 100,000 one-item
  groups of the dedupe step a second round trip: an empty first answer.)

On a 20-line pipeline of 100,000 such values in 10 groups the peak went from 2.0 GB to
1.3 GB. The runner still holds the shuffled values once, encoded: memory-bounded in the
catalog needs a shuffle on disk or a service (Dataflow's), not an in-memory runner.

The patches are swapped in only while ``LocalRunner.run_pipeline`` runs (``PATCHES``) and
restored after, on error too. Every Beam internal they rely on is described in
``runners/fn_api_internals.py`` and checked when this module is imported: another Beam
version, or a renamed or reshaped internal, is refused with a one-line reason
(``IncompatibleBeam``). Beam's own runner still having each gap is tested
(``tests/test_local_runner.py``), so an upgrade that fixes one shows.
"""

from __future__ import annotations

from apache_beam.coders.coder_impl import create_OutputStream
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_fn_api_pb2
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.runners.portability.fn_api_runner.translations import unique_name

from runners.beam_internals import IncompatibleBeam, Patch, Patches  # noqa: F401 (re-exported)
from runners.fn_api_internals import execution, fn_runner, translations, worker_handlers
from runners.memory import return_freed_memory, trim_freed_memory

# Longer than any bundle lives: the timer thread never fires (about 24.8 days).
_NEVER_MS = 2 ** 31 - 1
# A grouping buffer hands freed memory back to the system after about this much.
_TRIM_EVERY_BYTES = 64 * 2**20
# Grouped values are stored, and read by the workers, in pages of about this size.
STATE_PAGE_BYTES = 4 * 2**20
# A group whose values encode to less than this travels inline, with its key; only the rest
# of a larger group goes through the state API.
INLINE_GROUP_BYTES = 2**20


class GroupByGroupBuffer(execution.GroupingBuffer):
    """Beam's grouping buffer, partitioned one group at a time (see the module's docstring)."""

    def partition(self, n: int) -> list[list[bytes]]:
        if self._grouped_output:
            return self._grouped_output
        if not self._windowing.is_default():
            return super().partition(n)  # triggers: Beam's own path (the build has none)
        coder_impl = self._post_grouped_coder.get_impl()
        key_coder_impl = self._key_coder.get_impl()
        self._grouped_output = [[] for _ in range(n)]
        freed = 0
        for index, encoded_key in enumerate(list(self._table)):
            values = self._table.pop(encoded_key)
            stream = create_OutputStream()
            coder_impl.encode_to_stream(
                _ON_TIME_IN_THE_GLOBAL_WINDOW.with_value(
                    (key_coder_impl.decode(encoded_key), values)), stream, True)
            del values
            freed += stream.size()
            self._grouped_output[index % n].append(stream.get())
            if freed >= _TRIM_EVERY_BYTES:
                trim_freed_memory()
                freed = 0
        trim_freed_memory()
        return self._grouped_output


def _on_time_in_the_global_window():
    from apache_beam.transforms.window import GlobalWindow, GlobalWindows
    from apache_beam.utils import windowed_value

    return GlobalWindows.windowed_value(
        None, timestamp=GlobalWindow().max_timestamp(),
        pane_info=windowed_value.PaneInfo(
            is_first=True, is_last=True, timing=windowed_value.PaneInfoTiming.ON_TIME,
            index=0, nonspeculative_index=0))


# The window and pane Beam's GroupingBuffer gives every group in the global window.
_ON_TIME_IN_THE_GLOBAL_WINDOW = _on_time_in_the_global_window()


class PagedExecutionContext(execution.FnApiRunnerExecutionContext):
    """Stores the values of a group that a worker reads through the state API in pages."""

    def _iterable_state_write(self, values, element_coder_impl) -> bytes:
        token = unique_name(None, "iter").encode("ascii")
        key = beam_fn_api_pb2.StateKey(runner=beam_fn_api_pb2.StateKey.Runner(key=token))
        state = self.worker_handler_manager.state_servicer
        page = create_OutputStream()
        for element in values:
            element_coder_impl.encode_to_stream(element, page, True)
            if page.size() >= STATE_PAGE_BYTES:
                state.append_raw(key, page.get())
                page = create_OutputStream()
        if page.size():
            state.append_raw(key, page.get())
        return token


class PagedStateServicer(worker_handlers.StateServicer):
    """Answers a read of grouped values (runner state) one stored page at a time: the page
    and a continuation token for the next, instead of all of a key's pages joined into one
    message. Every other state is answered as Beam does."""

    def get_raw(self, state_key, continuation_token=None):
        if state_key.WhichOneof("type") != "runner":
            return super().get_raw(state_key, continuation_token)
        with self._lock:
            pages = self._state[self._to_key(state_key)]
            page = int(continuation_token or b"0")
            if page >= len(pages):
                return b"", None
            return pages[page], (str(page + 1).encode() if page + 1 < len(pages) else None)


_beam_with_state_iterables = translations.TransformContext.with_state_iterables


def _with_state_iterables_inline_below(self, coder_id):
    """Beam's TransformContext.with_state_iterables, with our inline threshold."""
    coder_id = _beam_with_state_iterables(self, coder_id)
    coder = self.components.coders[coder_id]
    if coder.spec.urn == common_urns.coders.STATE_BACKED_ITERABLE.urn:
        coder.spec.payload = str(INLINE_GROUP_BYTES).encode("ascii")
    return coder_id


class PagedWorkerHandlerManager(worker_handlers.WorkerHandlerManager):
    """Worker handlers whose state service pages grouped values (PagedStateServicer)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.state_servicer = PagedStateServicer()


# What LocalRunner swaps in while a pipeline runs; each is described, and checked, in
# runners/fn_api_internals.py. Looked up by name when the runner starts an embedded worker,
# makes a buffer for a GroupByKey's output, its execution context and its worker handlers,
# and the coders of a GroupByKey's output.
PATCHES = Patches([
    Patch(worker_handlers, "DATA_BUFFER_TIME_LIMIT_MS", _NEVER_MS),
    Patch(execution, "GroupingBuffer", GroupByGroupBuffer),
    Patch(execution, "FnApiRunnerExecutionContext", PagedExecutionContext),
    Patch(fn_runner, "WorkerHandlerManager", PagedWorkerHandlerManager),
    Patch(translations.TransformContext, "with_state_iterables",
          _with_state_iterables_inline_below),
])


class LocalRunner(FnApiRunner):
    """The FnApiRunner with its embedded workers' timed flush switched off, grouped values
    partitioned group by group and read by the workers page by page, and freed memory
    given back."""

    def __init__(self, **kwargs):
        # A GroupByKey's output is otherwise sent to the worker whole, before the first
        # group is processed, and held there in several copies (encoded, in gRPC messages,
        # decoded): about 35 KB per item of the catalog at the shard stage. Paged through
        # the state API, as Dataflow pages large groups, a worker holds the group it reads.
        kwargs.setdefault("use_state_iterables", True)
        super().__init__(**kwargs)

    def run_pipeline(self, pipeline, options):
        return_freed_memory()
        with PATCHES.applied():
            return super().run_pipeline(pipeline, options)
