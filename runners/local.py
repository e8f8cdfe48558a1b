"""The local runner: Beam 2.77.0's FnApiRunner, with its gaps closed.

1. Torn bundles. In ``direct_running_mode=multi_threading`` the FnApiRunner runs its SDK
   workers in process behind ``EmbeddedPythonGrpcEnvironment.default()``, whose worker
   handler falls back to ``worker_handlers.DATA_BUFFER_TIME_LIMIT_MS`` (1,000 ms): every
   output stream of a bundle is then a ``data_plane.TimeBasedBufferingClosableOutputStream``,
   flushed once a second by a timer thread. That flush takes the buffer (``get()``) and
   empties it (``_clear()``) while the bundle's own thread goes on encoding elements into
   it, with no lock between the two. A bundle that runs longer than a second can lose the
   bytes written in between, or send half an element whose other half follows in the next
   message. 200,000 elements out of a one-element ``Create`` arrive as 199,128-199,448; a
   ``Flatten`` into ``GroupByKey`` decodes the torn stream into garbage and grows to 24 GB
   in a minute (issue 13: the build's out-of-memory kill at 20,000 items).

   Fix: embedded workers flush by size only (10 MB, Beam's own threshold), as Dataflow's
   and every other SDK harness does by default. The timer only matters for streaming
   latency.

2. A shuffle held in memory, several times over (issue 28). The runner keeps every
   PCollection that crosses a stage boundary until the stage that reads it has run: a
   GroupByKey's values in ``execution.GroupingBuffer`` (decoded), other materialized
   PCollections (a multi-input Flatten, a PCollection two stages read) in
   ``execution.ListBuffer``. And it sends a worker its whole share of a buffer as one
   data-plane message (``BundleManager._send_input_to_worker`` never flushes), built and
   copied four or five times on the way. With ``use_state_iterables`` a large group is one
   state entry, read by the worker in one message.

   Fix, measured on 20-line pipelines (``benchmarks/shuffle_memory.py``):

   - the buffers keep at most ``runners.spill.SPILL_BYTES`` (16 MB) each in memory and
     the rest, encoded, in an unlinked file in ``$TMPDIR`` (``runners/spill.py``); a
     GroupByKey's groups are encoded one at a time, the workers get the same bytes in the
     same order;
   - a grouped value too large to travel inline (``INLINE_GROUP_BYTES``) is stored as
     state pages of ``STATE_PAGE_BYTES`` (``PagedExecutionContext``), kept the same way,
     and a worker reads them a page at a time (``PagedStateServicer``: Beam's answer was
     all pages joined into one message);
   - a worker's input is sent in messages of the data plane's 10 MB, from a thread of its
     own while the bundle runs (``StreamingInputBundleManager``: sent first and in pieces,
     it would wait forever on the worker's bounded input queue);
   - a data channel queues at most ``CHANNEL_QUEUE_BYTES`` (16 MB) each way, where Beam
     queues 100 MB: with the workers in this process, queued bytes are copies.

   Measured (peak RSS, two workers, docs/benchmarks.md "The local runner's shuffle on
   disk"): 100,000 values of 5 KB (500 MB) through a Flatten into a GroupByKey: Beam's
   runner 4.44 GB, this runner before 3.09 GB, now 1.10 GB; 500,000 (2.5 GB): 1.17 GB.
   What is left is Beam's data plane (10 MB messages in flight and queued, copied on the
   way), whatever the size of the shuffle. ``$TMPDIR`` holds up to twice the largest
   shuffle (its elements, then the state pages of its large groups, kept until the end).

The patches are swapped in only while ``LocalRunner.run_pipeline`` runs (``PATCHES``) and
restored after, on error too. Every Beam internal they rely on is described in
``runners/fn_api_internals.py`` and checked when this module is imported: another Beam
version, or a renamed or reshaped internal, is refused with a one-line reason
(``IncompatibleBeam``). Beam's own runner still having each gap is tested
(``tests/test_local_runner.py``), so an upgrade that fixes one shows.
"""

from __future__ import annotations

import logging
import threading

from apache_beam.coders.coder_impl import create_OutputStream
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_fn_api_pb2
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from runners.beam_internals import Patch, Patches
from runners.fn_api_internals import (
    data_plane, execution, fn_runner, translations, worker_handlers)
from runners.memory import return_freed_memory, trim_freed_memory
from runners.spill import SpillingGroupingBuffer, SpillingListBuffer, Spiller, read

# Longer than any bundle lives: the timer thread never fires (about 24.8 days).
_NEVER_MS = 2 ** 31 - 1
# Grouped values are stored, and read by the workers, in pages of about this size.
STATE_PAGE_BYTES = 4 * 2**20
# A group whose values encode to less than this travels inline, with its key; only the rest
# of a larger group goes through the state API.
INLINE_GROUP_BYTES = 2**20
# What one direction of a data channel may hold queued (Beam: 100 MB): with workers in this
# process, everything queued is a copy, and there are eight such queues for two workers.
CHANNEL_QUEUE_BYTES = 16 * 2**20
# After a bundle failed, how long to wait for the thread that sent its input to finish.
_SENDER_GRACE_S = 60


class PagedExecutionContext(execution.FnApiRunnerExecutionContext):
    """Stores the values of a group that a worker reads through the state API in pages,
    and gives materialized PCollections buffers that spill."""

    def _iterable_state_write(self, values, element_coder_impl) -> bytes:
        token = translations.unique_name(None, "iter").encode("ascii")
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

    def bundle_manager_for(self, stage, num_workers=None):
        if stage.name not in self._stage_managers:
            self._stage_managers[stage.name] = SpillingBundleContextManager(
                self, stage, num_workers or self.num_workers,
                split_managers=self.split_managers)
        return self._stage_managers[stage.name]


class SpillingBundleContextManager(execution.BundleContextManager):
    """Makes a materialized PCollection's buffer a SpillingListBuffer (a GroupByKey's is
    made by name: execution.GroupingBuffer, patched)."""

    def get_buffer(self, buffer_id, transform_id):
        kind, _ = translations.split_buffer_id(buffer_id)
        buffers = self.execution_context.pcoll_buffers
        if kind == "materialize" and buffer_id not in buffers:
            buffers[buffer_id] = SpillingListBuffer(self.get_input_coder_impl(transform_id))
        return super().get_buffer(buffer_id, transform_id)


class PagedStateServicer(worker_handlers.StateServicer):
    """Keeps grouped values (runner state) in memory up to SPILL_BYTES and on disk past
    it, and answers a read of them one stored page at a time: the page and a continuation
    token for the next, instead of all of a key's pages joined into one message. Every
    other state is kept and answered as Beam does."""

    def __init__(self):
        super().__init__()
        self._pages = Spiller()

    def append_raw(self, state_key, data):
        if state_key.WhichOneof("type") == "runner":
            data = self._pages.keep(data)
        return super().append_raw(state_key, data)

    def get_raw(self, state_key, continuation_token=None):
        if state_key.WhichOneof("type") != "runner":
            return super().get_raw(state_key, continuation_token)
        with self._lock:
            pages = self._state[self._to_key(state_key)]
            pages = pages if isinstance(pages, list) else list(pages)  # Beam's checkpoints
            index = int(continuation_token or b"0")
            if index >= len(pages):
                return b"", None
            page, more = pages[index], index + 1 < len(pages)
        return read(page), (str(index + 1).encode() if more else None)

    def close(self) -> None:
        self._pages.close()


class PagedWorkerHandlerManager(worker_handlers.WorkerHandlerManager):
    """Worker handlers whose state service pages grouped values (PagedStateServicer)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.state_servicer = PagedStateServicer()

    def close_all(self):
        try:
            super().close_all()
        finally:
            self.state_servicer.close()


class StreamingInputBundleManager(fn_runner.BundleManager):
    """Beam's BundleManager, sending a bundle's input in messages of about 10 MB (the data
    plane's own flush threshold) while the bundle runs. Beam's writes a worker's whole
    input into one message before it starts the bundle."""

    def process_bundle(self, *args, **kwargs):
        self._senders = []
        result = bundle_error = None
        try:
            result = super().process_bundle(*args, **kwargs)
        except BaseException as error:  # noqa: BLE001 (raised below, after the senders)
            bundle_error = error
        for sender in self._senders:
            if bundle_error is not None:
                sender.abandon()  # the worker has stopped reading: send nothing more
            sender.join(None if bundle_error is None else _SENDER_GRACE_S)
        failed = next((sender.error for sender in self._senders if sender.error), None)
        if failed is not None:  # the cause: the bundle failed because its input did not come
            raise failed
        if bundle_error is not None:
            raise bundle_error
        trim_freed_memory()  # what the bundle freed, handed back before the next stage
        return result

    def _send_input_to_worker(self, process_bundle_id, read_transform_id, byte_streams):
        data_conn = self._worker_handler.data_conn
        data_out = data_conn.output_stream(process_bundle_id, read_transform_id)
        chunks = iter(byte_streams or [])  # a grouping buffer is partitioned here, not there
        if isinstance(data_conn, data_plane.InMemoryDataChannel):
            # An in-memory worker runs the bundle in this thread, once asked to: its input
            # must be all there before (and that channel never blocks).
            _send(chunks, data_out)
            return
        # Over gRPC the worker reads its input only once the bundle has started, and the
        # channel holds a bounded amount: sent before the bundle starts, a large input would
        # wait forever.
        sender = _InputSender(chunks, data_out, data_conn)
        self._senders.append(sender)
        sender.start()


def _send(chunks, data_out, abandoned=None) -> None:
    for chunk in chunks:
        if abandoned is not None and abandoned.is_set():
            return
        data_out.write(chunk)
        data_out.maybe_flush()  # Beam's sender never calls it: one message for everything
    data_out.close()


class _InputSender(threading.Thread):
    def __init__(self, chunks, data_out, data_conn):
        super().__init__(name="send-bundle-input", daemon=True)
        self._chunks, self._data_out, self._data_conn = chunks, data_out, data_conn
        self._abandoned = threading.Event()
        self.error = None

    def abandon(self) -> None:
        self._abandoned.set()

    def run(self):
        try:
            _send(self._chunks, self._data_out, self._abandoned)
        except BaseException as error:  # noqa: BLE001 (handed to the bundle's thread)
            self.error = error
            # The worker waits for the rest of its input: closing the channel fails the
            # bundle there, and the wait for its output here, instead of both waiting on.
            try:
                self._data_conn.close()
            except Exception:  # noqa: BLE001 (the channel's own error, after ours)
                logging.getLogger(__name__).debug("closing the data channel", exc_info=True)


_beam_with_state_iterables = translations.TransformContext.with_state_iterables


def _with_state_iterables_inline_below(self, coder_id):
    """Beam's TransformContext.with_state_iterables, with our inline threshold."""
    coder_id = _beam_with_state_iterables(self, coder_id)
    coder = self.components.coders[coder_id]
    if coder.spec.urn == common_urns.coders.STATE_BACKED_ITERABLE.urn:
        coder.spec.payload = str(INLINE_GROUP_BYTES).encode("ascii")
    return coder_id


# What LocalRunner swaps in while a pipeline runs; each is described, and checked, in
# runners/fn_api_internals.py. Looked up by name when the runner starts an embedded worker,
# opens a data channel, makes a buffer for a GroupByKey's output, its execution context, its
# worker handlers, a bundle manager, and the coders of a GroupByKey's output.
PATCHES = Patches([
    Patch(worker_handlers, "DATA_BUFFER_TIME_LIMIT_MS", _NEVER_MS),
    Patch(data_plane, "_DEFAULT_SEND_QUEUE_MAX_BYTES", CHANNEL_QUEUE_BYTES),
    Patch(execution, "GroupingBuffer", SpillingGroupingBuffer),
    Patch(execution, "FnApiRunnerExecutionContext", PagedExecutionContext),
    Patch(fn_runner, "WorkerHandlerManager", PagedWorkerHandlerManager),
    Patch(fn_runner, "BundleManager", StreamingInputBundleManager),
    Patch(translations.TransformContext, "with_state_iterables",
          _with_state_iterables_inline_below),
])


class LocalRunner(FnApiRunner):
    """The FnApiRunner with its embedded workers' timed flush switched off, and its shuffle
    spilled to disk, partitioned group by group, sent in pieces and read by the workers
    page by page."""

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
