"""Memory a build frees, handed back to the system (glibc's heap and Arrow's pool)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

_M_ARENA_MAX, _ARENAS = -8, 2  # glibc's mallopt parameter, and the arenas we allow


@functools.lru_cache(maxsize=1)
def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"))
    except OSError:
        return None


def trim_freed_memory() -> None:
    """glibc keeps freed blocks in its heap, as resident memory, until told to give back
    the free pages (``malloc_trim``); the grouped values a runner frees are millions of
    small blocks that nothing else reuses."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def return_freed_memory() -> None:
    """Allocators that keep what a build frees keep it for the whole build, as resident
    memory: glibc gives each new thread a malloc arena of its own (up to 8 per core, and a
    build runs dozens of threads), and Arrow's mimalloc pool holds freed segments. Two
    arenas, and Arrow on the system allocator (for the rest of the process)."""
    import pyarrow

    pyarrow.set_memory_pool(pyarrow.system_memory_pool())
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(_M_ARENA_MAX, _ARENAS)
