"""The local runner's shuffle on disk: buffers that keep at most about SPILL_BYTES of a
PCollection in memory and the rest, encoded, in an unlinked temporary file.

Beam's FnApiRunner keeps every PCollection that crosses a stage boundary in memory until the
stage that reads it has run: a GroupByKey's values in ``execution.GroupingBuffer``, other
materialized PCollections (a Flatten of several inputs, a PCollection read by two stages, a
side input's source) in ``execution.ListBuffer``. The buffers here are those classes with
the same contract and the same bytes out, in the same order, but bounded memory:

- :class:`SpillingGroupingBuffer` keeps each element as the encoded bytes it arrived as
  (Beam's decodes them), grouped by key in the order keys first arrived. Past SPILL_BYTES
  it writes every group's elements to the spill file, in segments of SEGMENT_BYTES, and
  goes on. ``partition`` encodes one group at a time, decoding its values as the coder reads
  them; what it produces for the workers is kept like a ListBuffer's chunks (below), and the
  table is dropped as it goes.
- :class:`SpillingListBuffer` keeps the first SPILL_BYTES of chunks in memory and writes
  the rest to the file as they come; ``partition`` and iteration read them back one at a
  time.

A spill file (:class:`SpillFile`) is ``tempfile.TemporaryFile`` in ``$TMPDIR``: it has no
name on disk, and its space is freed once nothing points into it any more (the buffer and
what it handed the workers), or when it is closed.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import threading
from typing import Iterable, Iterator, NamedTuple, Union

from apache_beam.coders.coder_impl import create_InputStream, create_OutputStream

from runners.fn_api_internals import execution
from runners.memory import trim_freed_memory

# A buffer keeps about this many bytes of its PCollection in memory, and the rest on disk.
SPILL_BYTES = 16 * 2**20
# Spilled elements of one group are written, and read back, in runs of about this size.
SEGMENT_BYTES = 4 * 2**20
# Encoded groups for one worker are joined into chunks of about this size before they are
# kept (in memory or on disk): one worker's share of a million small groups is then a few
# hundred chunks, not a million.
CHUNK_BYTES = 2**20
# What an element kept in memory costs besides its bytes: a bytes object and a list slot.
_ELEMENT_OVERHEAD = 48


class Segment(NamedTuple):
    """Bytes written to a spill file. It keeps the file open while it exists."""

    file: "SpillFile"
    offset: int
    length: int

    def read(self) -> bytes:
        return self.file.read(self.offset, self.length)


Entry = Union[bytes, Segment]  # a chunk (or an encoded element) in memory, or on disk


def read(entry: Entry) -> bytes:
    return entry.read() if isinstance(entry, Segment) else entry


class SpillFile:
    """An unlinked temporary file in ``$TMPDIR``, appended to and read at offsets (pread):
    any number of threads may read while one writes."""

    def __init__(self):
        self._file = tempfile.TemporaryFile(prefix="catalog-index-spill-")
        self._end = 0
        self._lock = threading.Lock()

    def write(self, data: bytes) -> Segment:
        view = memoryview(data)
        with self._lock:
            offset = self._end
            written = 0
            while written < len(view):
                written += os.pwrite(self._file.fileno(), view[written:], offset + written)
            self._end += len(view)
        return Segment(self, offset, len(view))

    def read(self, offset: int, length: int) -> bytes:
        parts = []
        while length:
            data = os.pread(self._file.fileno(), length, offset)
            if not data:
                raise EOFError(f"spill file ends before byte {offset + length:,}")
            parts.append(data)
            offset += len(data)
            length -= len(data)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def close(self) -> None:
        self._file.close()


class Spiller:
    """Keeps chunks in memory until they add up to SPILL_BYTES; the rest go to disk."""

    def __init__(self):
        self.budget = SPILL_BYTES  # read now: tests lower it
        self.in_memory = 0
        self.file = None
        self._lock = threading.Lock()

    def keep(self, chunk: bytes) -> Entry:
        with self._lock:
            if self.in_memory + len(chunk) <= self.budget:
                self.in_memory += len(chunk)
                return chunk
            if self.file is None:
                self.file = SpillFile()
        return self.file.write(chunk)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


class Part:
    """One worker's share of a buffer, as ``partition`` hands it out: its chunks, each read
    from disk only as it is sent (Beam's buffers hand out lists of bytes)."""

    def __init__(self, entries: list):
        self._entries = entries

    def __iter__(self) -> Iterator[bytes]:
        return (read(entry) for entry in self._entries)

    def __len__(self) -> int:
        return len(self._entries)


class SpillingListBuffer(execution.ListBuffer):
    """Beam's ListBuffer (a materialized PCollection: chunks of encoded elements), with the
    chunks past SPILL_BYTES on disk."""

    def __init__(self, coder_impl):
        self._entries: list = []
        self._spiller = Spiller()
        super().__init__(coder_impl)

    # Beam's own code reads another ListBuffer's chunks as ``_inputs`` (ListBuffer.extend):
    # they are read into memory only then.
    @property
    def _inputs(self) -> list:
        return [read(entry) for entry in self._entries]

    @_inputs.setter
    def _inputs(self, chunks: list) -> None:
        self._entries = [self._spiller.keep(chunk) for chunk in chunks]

    def copy(self) -> "SpillingListBuffer":
        new = SpillingListBuffer(self._coder_impl)
        new._entries = list(self._entries)
        new._spiller = self._spiller  # appended to by one of the two at most
        return new

    def extend(self, extra) -> None:
        if self.cleared:
            raise RuntimeError("Trying to append to a cleared ListBuffer.")
        if self._grouped_output:
            raise RuntimeError("ListBuffer append after read.")
        assert isinstance(extra, execution.ListBuffer)
        if isinstance(extra, SpillingListBuffer):
            self._entries.extend(extra._entries)
        else:
            self._entries.extend(self._spiller.keep(chunk) for chunk in extra._inputs)

    def append(self, element: bytes) -> None:
        if self.cleared:
            raise RuntimeError("Trying to append to a cleared ListBuffer.")
        if self._grouped_output:
            raise RuntimeError("ListBuffer append after read.")
        self._entries.append(self._spiller.keep(element))

    def partition(self, n: int) -> list:
        if self.cleared:
            raise RuntimeError("Trying to partition a cleared ListBuffer.")
        if len(self._entries) >= n or not self._entries:
            return [Part(self._entries[k::n]) for k in range(n)]
        if not self._grouped_output:  # fewer chunks than workers: split them by element
            streams = [create_OutputStream() for _ in range(n)]
            index = 0
            for chunk in self:
                stream = create_InputStream(chunk)
                while stream.size() > 0:
                    value = self._coder_impl.decode_from_stream(stream, True)
                    self._coder_impl.encode_to_stream(value, streams[index], True)
                    index = (index + 1) % n
            self._grouped_output = [[stream.get()] for stream in streams]
        return self._grouped_output

    def __iter__(self) -> Iterator[bytes]:
        if self.cleared:
            raise RuntimeError("Trying to iterate through a cleared ListBuffer.")
        return (read(entry) for entry in self._entries)

    def clear(self) -> None:
        self.cleared = True
        self._entries = []
        self._spiller = Spiller()
        self._grouped_output = None


class _Group:
    """One key's elements, in the order they arrived: encoded elements in memory (bytes)
    and runs of them on disk (Segment)."""

    __slots__ = ("count", "entries")

    def __init__(self):
        self.count = 0
        self.entries: list = []


class SpillingGroupingBuffer(execution.GroupingBuffer):
    """Beam's GroupingBuffer (a GroupByKey's values, grouped by key on the runner), with its
    elements kept encoded and, past SPILL_BYTES, on disk. The workers get the same bytes in
    the same order as from Beam's: groups in the order their keys first arrived, values in
    the order they arrived, group ``i`` to worker ``i % n``."""

    def __init__(self, pre_grouped_coder, post_grouped_coder, windowing):
        super().__init__(pre_grouped_coder, post_grouped_coder, windowing)
        self._groups: dict = {}  # encoded key -> _Group, in the order keys first arrived
        self._in_memory = 0
        self._spill = None

    def append(self, elements_data: bytes) -> None:
        if self._grouped_output:
            raise RuntimeError("Grouping table append after read.")
        coder_impl = self._pre_grouped_coder.get_impl()
        key_coder_impl = self._key_coder.get_impl()
        stream = create_InputStream(elements_data)
        start = 0
        while stream.size() > 0:
            key = coder_impl.decode_from_stream(stream, True).value[0]
            stop = len(elements_data) - stream.size()
            group = self._group(key_coder_impl.encode(key))
            group.entries.append(elements_data[start:stop])  # the element, as it came
            group.count += 1
            self._in_memory += stop - start + _ELEMENT_OVERHEAD
            start = stop
        if self._in_memory > SPILL_BYTES:
            self._spill_elements()

    def _group(self, encoded_key: bytes) -> _Group:
        group = self._groups.get(encoded_key)
        if group is None:
            group = self._groups[encoded_key] = _Group()
        return group

    def _spill_elements(self) -> None:
        """Every group's elements in memory, to disk, in runs of up to SEGMENT_BYTES."""
        if self._spill is None:
            self._spill = SpillFile()
        for group in self._groups.values():
            group.entries = list(_in_segments(group.entries, self._spill))
        self._in_memory = 0
        trim_freed_memory()

    def extend(self, input_buffer) -> None:
        if isinstance(input_buffer, execution.ListBuffer):
            return  # as Beam's: the empty buffers the runner pads a bundle's inputs with
        assert isinstance(input_buffer, SpillingGroupingBuffer), \
            f"Input was not SpillingGroupingBuffer: {input_buffer}"
        for encoded_key, other in input_buffer._groups.items():
            group = self._group(encoded_key)
            group.entries.extend(other.entries)
            group.count += other.count
            self._in_memory += sum(len(entry) + _ELEMENT_OVERHEAD
                                   for entry in other.entries if isinstance(entry, bytes))
        if self._in_memory > SPILL_BYTES:
            self._spill_elements()

    def partition(self, n: int) -> list:
        """n parts, each a Part of chunks of encoded groups. The groups are encoded here, one
        at a time, as Beam's are (a group too large to travel inline is written to state
        then), and dropped from the table once encoded."""
        if self._grouped_output:
            return self._grouped_output
        coder_impl = self._post_grouped_coder.get_impl()
        key_coder_impl = self._key_coder.get_impl()
        windowed = self._windowed_key_values()
        spiller = Spiller()  # one budget for all the parts
        parts = [_PartWriter(spiller) for _ in range(n)]
        groups, self._groups = self._groups, {}
        for index, encoded_key in enumerate(list(groups)):
            key = key_coder_impl.decode(encoded_key)
            values = _Values(groups.pop(encoded_key), self._pre_grouped_coder.get_impl(),
                             keep_windows=not self._windowing.is_default())
            stream = create_OutputStream()
            for windowed_key_values in windowed(key, values):
                coder_impl.encode_to_stream(windowed_key_values, stream, True)
            del values
            parts[index % n].add(stream.get())
        self._spill = None
        self._in_memory = 0
        self._grouped_output = [part.finish() for part in parts]
        trim_freed_memory()
        return self._grouped_output

    def _windowed_key_values(self):
        """(key, values) -> the windowed (key, values) to encode, as Beam's buffer makes them."""
        if not self._windowing.is_default():
            from apache_beam.transforms import trigger

            driver = trigger.create_trigger_driver(self._windowing, True)
            return lambda key, values: driver.process_entire_key(key, list(values))
        return lambda key, values: [_ON_TIME_IN_THE_GLOBAL_WINDOW.with_value((key, values))]

    def __iter__(self) -> Iterator[bytes]:
        # Partitioned now, in the caller's thread (not when the first chunk is read).
        return itertools.chain.from_iterable(self.partition(1))


def _in_segments(entries: Iterable[Entry], spill: SpillFile) -> Iterator[Entry]:
    """entries, with each run of encoded elements in memory written to ``spill`` in
    segments of up to about SEGMENT_BYTES."""
    run, size = [], 0
    for entry in entries:
        if isinstance(entry, Segment):
            if run:
                yield spill.write(b"".join(run))
                run, size = [], 0
            yield entry
            continue
        run.append(entry)
        size += len(entry)
        if size >= SEGMENT_BYTES:
            yield spill.write(b"".join(run))
            run, size = [], 0
    if run:
        yield spill.write(b"".join(run))


class _Values:
    """A group's values, decoded one at a time as a coder reads them (a run from disk at a
    time); ``len`` is their number, as a list's (a coder writes it first when it can)."""

    def __init__(self, group: _Group, element_coder_impl, keep_windows: bool):
        self._group = group
        self._decode = element_coder_impl.decode_from_stream
        self._keep_windows = keep_windows

    def __len__(self) -> int:
        return self._group.count

    def __iter__(self) -> Iterator:
        for entry in self._group.entries:
            stream = create_InputStream(read(entry))
            while stream.size() > 0:
                windowed_key_value = self._decode(stream, True)
                value = windowed_key_value.value[1]
                yield windowed_key_value.with_value(value) if self._keep_windows else value


class _PartWriter:
    """Encoded groups for one worker, joined into chunks of about CHUNK_BYTES, each kept by
    the partition's Spiller."""

    def __init__(self, spiller: Spiller):
        self._spiller = spiller
        self._entries: list = []
        self._pending: list = []
        self._pending_bytes = 0

    def add(self, encoded: bytes) -> None:
        self._pending.append(encoded)
        self._pending_bytes += len(encoded)
        if self._pending_bytes >= CHUNK_BYTES:
            self._seal()

    def _seal(self) -> None:
        if self._pending:
            chunk = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
            self._entries.append(self._spiller.keep(chunk))
            self._pending, self._pending_bytes = [], 0

    def finish(self) -> Part:
        self._seal()
        return Part(self._entries)


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
