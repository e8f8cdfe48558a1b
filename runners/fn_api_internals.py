"""The internals of Beam's FnApiRunner that runners/local.py and runners/spill.py subclass,
call or patch, each with what it must look like; checked when this module is imported, so
that a Beam they do not fit is refused before anything relies on it."""

from __future__ import annotations

from apache_beam.runners.portability.fn_api_runner import (
    execution, fn_runner, translations, worker_handlers)
from apache_beam.runners.worker import data_plane

from runners.beam_internals import Internal, a_class, an_instance_of, check, parameters

RELIED_ON = [
    # Patched in for the duration of a pipeline (runners.local.PATCHES).
    Internal(worker_handlers, "DATA_BUFFER_TIME_LIMIT_MS", an_instance_of(int)),
    Internal(data_plane, "_DEFAULT_SEND_QUEUE_MAX_BYTES", an_instance_of(int)),
    Internal(execution, "GroupingBuffer", a_class(
        "_key_coder _pre_grouped_coder _post_grouped_coder _windowing _grouped_output",
        __init__="self pre_grouped_coder post_grouped_coder windowing",
        append="self elements_data", extend="self input_buffer", partition="self n",
        __iter__="self", copy="self")),
    Internal(execution, "FnApiRunnerExecutionContext", a_class(
        "worker_handler_manager pcoll_buffers num_workers split_managers _stage_managers",
        bundle_manager_for="self stage num_workers",
        _iterable_state_write="self values element_coder_impl")),
    Internal(fn_runner, "execution", lambda module: None if module is execution else
             "is not the execution module"),
    Internal(fn_runner, "WorkerHandlerManager", a_class(
        "state_servicer", __init__="self environments job_provision_info",
        close_all="self")),
    Internal(fn_runner, "BundleManager", a_class(
        "_worker_handler",
        process_bundle="self inputs expected_outputs fired_timers expected_output_timers "
                       "dry_run",
        _send_input_to_worker="self process_bundle_id read_transform_id byte_streams")),
    # (self, coder_id), behind Beam's memoize_on_instance wrapper.
    Internal(translations.TransformContext, "with_state_iterables", parameters("self args")),
    # Subclassed or called.
    Internal(execution, "ListBuffer", a_class(
        "_coder_impl _inputs _grouped_output cleared", __init__="self coder_impl",
        append="self element", extend="self extra", partition="self n", __iter__="self",
        copy="self", clear="self", reset="self")),
    Internal(execution, "BundleContextManager", a_class(
        "execution_context", __init__="self execution_context stage num_workers split_managers",
        get_buffer="self buffer_id transform_id", get_input_coder_impl="self transform_id")),
    Internal(worker_handlers, "StateServicer", a_class(
        "_lock _state", __init__="self", get_raw="self state_key continuation_token",
        append_raw="self state_key data", _to_key="state_key")),
    Internal(translations, "unique_name", parameters("existing prefix")),
    Internal(translations, "split_buffer_id", parameters("buffer_id")),
    Internal(data_plane, "InMemoryDataChannel", a_class(
        output_stream="self instruction_id transform_id")),
    Internal(data_plane, "_GrpcDataChannel", a_class(
        close="self", output_stream="self instruction_id transform_id")),
    Internal(data_plane, "SizeBasedBufferingClosableOutputStream", a_class(
        maybe_flush="self", close="self")),
]

check(RELIED_ON)
