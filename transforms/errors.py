"""Dead letters: every stage sends the items it cannot handle to one tagged output.

An error row names the item, the stage, the exception type and a readable message; the
build writes them all to ``errors/`` and counts them in the manifest.
"""

from __future__ import annotations

import functools

import apache_beam as beam

from catalog_index.progress import TALLY

ERRORS = "errors"  # the tag of every stage's dead-letter output
NAMESPACE = "catalog_index"


def without(item: dict, *keys: str) -> dict:
    """``item`` less ``keys``, as a new dict. A DoFn reads its input and never changes it:
    runners that hand elements over in memory (Dask) may give the same dict to another
    consumer, or to a retried task."""
    return {key: value for key, value in item.items() if key not in keys}


def error_row(item: dict, stage: str, error_type: str, message: str,
              retryable: bool = False) -> dict:
    return {"item_id": item.get("item_id"), "image_uri": item.get("image_uri"),
            "stage": stage, "error_type": error_type, "message": message,
            "retryable": retryable}


# Failures of the storage rather than of the item: worth trying again next night.
_TRANSIENT_NAMES = {"RetryError", "ServiceUnavailable", "TooManyRequests",
                    "InternalServerError", "GatewayTimeout", "BadGateway", "DeadlineExceeded",
                    "ReadTimeout", "ConnectTimeout", "ChunkedEncodingError"}


def is_transient(error: Exception) -> bool:
    """A timeout, a dropped connection, or a 429/5xx that outlasted the client's retries."""
    return isinstance(error, (TimeoutError, ConnectionError)) or any(
        cls.__name__ in _TRANSIENT_NAMES for cls in type(error).__mro__)


def dead_letter(item: dict, stage: str, error: Exception) -> beam.pvalue.TaggedOutput:
    """Tag ``item`` as failed in ``stage`` because of ``error``, and count it."""
    counter(f"failed_{stage}").inc()
    return beam.pvalue.TaggedOutput(
        ERRORS, error_row(item, stage, type(error).__name__, str(error) or repr(error),
                          retryable=is_transient(error)))


class _Counter:
    """A Beam counter that also adds to this process's progress tally."""

    def __init__(self, name: str):
        self.name = name
        self.metric = beam.metrics.Metrics.counter(NAMESPACE, name)

    def inc(self, amount: int = 1) -> None:
        self.metric.inc(amount)
        TALLY.add(self.name, amount)


@functools.lru_cache(maxsize=None)
def counter(name: str) -> _Counter:
    """The Beam counter ``name`` (it finds the running bundle's metrics at each ``inc``,
    so one object per name serves every bundle and thread)."""
    return _Counter(name)
