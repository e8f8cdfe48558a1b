"""The internals of Beam's FnApiRunner that runners/local.py subclasses, calls or patches,
each with what it must look like; checked when this module is imported, so that a Beam they
do not fit is refused before anything relies on it."""

from __future__ import annotations

from apache_beam.runners.portability.fn_api_runner import (
    execution, fn_runner, translations, worker_handlers)

from runners.beam_internals import Internal, a_class, an_instance_of, check, parameters

RELIED_ON = [
    # Patched in for the duration of a pipeline (runners.local.PATCHES).
    Internal(worker_handlers, "DATA_BUFFER_TIME_LIMIT_MS", an_instance_of(int)),
    Internal(execution, "GroupingBuffer", a_class(
        "_key_coder _post_grouped_coder _windowing _grouped_output _table",
        __init__="self pre_grouped_coder post_grouped_coder windowing",
        partition="self n")),
    Internal(execution, "FnApiRunnerExecutionContext", a_class(
        "worker_handler_manager",
        _iterable_state_write="self values element_coder_impl")),
    Internal(fn_runner, "execution", lambda module: None if module is execution else
             "is not the execution module"),
    Internal(fn_runner, "WorkerHandlerManager", a_class(
        "state_servicer", __init__="self environments job_provision_info")),
    # (self, coder_id), behind Beam's memoize_on_instance wrapper.
    Internal(translations.TransformContext, "with_state_iterables", parameters("self args")),
    # Subclassed or called.
    Internal(worker_handlers, "StateServicer", a_class(
        "_lock _state", __init__="self", get_raw="self state_key continuation_token",
        append_raw="self state_key data", _to_key="state_key")),
    Internal(translations, "unique_name", parameters("existing prefix")),
]

check(RELIED_ON)
