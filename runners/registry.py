"""Runners by name: what ``--runner`` means, which Beam options it brings, whether a job
runs in this process, and the runner object to hand a pipeline to (runners/ adapts the
FnApiRunner and Dask's). The one place that knows runner names; nothing here builds a
pipeline.
"""

from __future__ import annotations

import argparse
import importlib
import os
from typing import List, Optional

from apache_beam.options.pipeline_options import PipelineOptions


class RunnerError(ValueError):
    """A ``--runner`` (or one of its options) that cannot be used; the message says why."""


# Locally, threads beat processes: decoding (libjpeg-turbo) and inference (TFLite/TF) release
# the GIL, and one shared model per process avoids each worker process importing TensorFlow
# and loading its own copy (2,000 800 px JPEGs on 2 cores: 135 images/s with threads, 52 with
# processes; docs/benchmarks.md). --direct_running_mode=multi_processing works too.
# The FnApiRunner is what Beam 2.77's DirectRunner falls back to after it has tried to
# download the Prism runner from GitHub: naming it skips a network call at run time.
# Runners Beam has no short name for, or whose gaps runners/ closes: --runner NAME -> class.
PROJECT_RUNNERS = {"daskrunner": "runners.dask.DaskRunner"}
# Runners whose job lives only as long as the client that submitted it (Dask's futures).
JOBS_END_WITH_CLIENT = {"runners.dask.DaskRunner"}
LOCAL_DEFAULTS = {"runner": "FnApiRunner", "direct_running_mode": "multi_threading",
                  "direct_num_workers": str(os.cpu_count() or 1)}


# Runners that run the job in this process: the FnApiRunner (the DirectRunner's fallback),
# run as runners/local.py's LocalRunner, and the old bundle-based DirectRunner.
FN_API_RUNNER_PATHS = ("apache_beam.runners.direct.direct_runner.DirectRunner",
                       "apache_beam.runners.portability.fn_api_runner.FnApiRunner")
IN_PROCESS_RUNNER_PATHS = FN_API_RUNNER_PATHS + (
    "apache_beam.runners.direct.direct_runner.BundleBasedDirectRunner",)


def runner_path(pipeline_options: PipelineOptions) -> Optional[str]:
    """The class the options' runner name means (None: the default, the FnApiRunner)."""
    name = pipeline_options.get_all_options().get("runner")
    return None if name is None else runner_class_path(name)


def is_local(pipeline_options: PipelineOptions) -> bool:
    path = runner_path(pipeline_options)
    return path is None or path in IN_PROCESS_RUNNER_PATHS


def runner_name(beam_args: List[str]) -> Optional[str]:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--runner", default=None)
    return parser.parse_known_args(beam_args)[0].runner


def runner_class_path(name: Optional[str]) -> Optional[str]:
    """The class a ``--runner`` name means: ours (PROJECT_RUNNERS), one of Beam's short
    names, or a dotted class path; None when Beam knows no such name."""
    from apache_beam.runners.runner import _RUNNER_MAP

    if not name:
        return None
    lowered = name.lower()
    for table in (PROJECT_RUNNERS, _RUNNER_MAP):
        path = table.get(lowered) or table.get(lowered + "runner")
        if path:
            return path
    return name if "." in name else None


def import_runner_options(beam_args: List[str]) -> Optional[str]:
    """Import the named runner's module, so that its options (DaskOptions...) are known
    when unknown flags are checked; -> its class path (None: the default runner)."""
    name = runner_name(beam_args)
    path = runner_class_path(name)
    if path is None:
        if name:
            raise RunnerError(f"--runner {name}: no such runner (a Beam runner name, "
                             "DaskRunner, or a module.Class path)")
        return None
    try:
        importlib.import_module(path.rsplit(".", 1)[0])
    except ImportError as error:
        extra = " (pip install '.[dask]')" if "dask" in path else ""
        raise RunnerError(f"--runner {name}: {error}{extra}") from None
    return path


def unknown_beam_args(beam_args: List[str]) -> List[str]:
    """Arguments that no Beam options class knows (Beam itself would only warn)."""
    parser = argparse.ArgumentParser(add_help=False)
    classes, seen = list(PipelineOptions.__subclasses__()), set()
    while classes:
        cls = classes.pop()
        if cls in seen:
            continue
        seen.add(cls)
        classes.extend(cls.__subclasses__())
        try:
            cls._add_argparse_args(parser)
        except argparse.ArgumentError:
            pass  # an option two classes share
    _, unknown = parser.parse_known_args(beam_args)
    return [arg for arg in unknown if arg.startswith("-")]


def pipeline_options(beam_args: List[str]) -> PipelineOptions:
    """Beam's options for ``beam_args``: checked (unknown flags are an error, the named
    runner's own included), with the local defaults when no runner is named."""
    import_runner_options(beam_args)
    unknown = unknown_beam_args(beam_args)
    if unknown:
        raise RunnerError(f"unrecognized arguments: {' '.join(unknown)}")
    given = {arg.lstrip("-").split("=")[0] for arg in beam_args if arg.startswith("--")}
    defaults = [] if "runner" in given else [
        f"--{key}={value}" for key, value in LOCAL_DEFAULTS.items() if key not in given]
    return PipelineOptions(beam_args + defaults)


def make_runner(pipeline_options: PipelineOptions):
    """The runner for ``--runner``: ours where runners/ adapts one, else None (Beam's)."""
    path = runner_path(pipeline_options)
    if path is None or path in FN_API_RUNNER_PATHS:
        from runners.local import LocalRunner

        return LocalRunner()
    if path not in PROJECT_RUNNERS.values():
        return None
    module, cls = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), cls)()


def default_inference_threads(pipeline_options: PipelineOptions) -> int:
    """Split the cores between the worker threads that run inference side by side."""
    options = pipeline_options.get_all_options()
    cores = os.cpu_count() or 1
    if (runner_path(pipeline_options) in (None, *FN_API_RUNNER_PATHS)) and \
            options.get("direct_running_mode") != "multi_processing":
        requested = options.get("direct_num_workers")
        workers = cores if requested == 0 else int(requested or 1)  # Beam: 0 = one per core
        return max(1, cores // workers)
    return 1  # distributed runners and process pools: a process per core already
