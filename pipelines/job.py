"""The build as a job: submitted to its runner, waited for, stopped on Ctrl-C or SIGTERM
(the job cancelled), and its outcome told in one line. Exit status: 0 published, 1 not
published (the gate failed, the job crashed or was stopped, another build published
first), 2 a usage error found while planning.
"""

from __future__ import annotations

import contextlib
import logging
import re
import signal
import threading

from apache_beam.runners.runner import PipelineState

from catalog_index import versions
from catalog_index.progress import ProgressReporter
from catalog_index.schema import LATEST_FILE, join


def run_job(submit, args, pipeline_options, build, console, log_path: str,
            read_latest) -> int:
    """``submit()`` -> a PipelineResult; waits for it (unless --no-wait) and reports the
    outcome on ``console``. ``read_latest(root)`` -> (version id, token) of LATEST."""
    log = "" if args.verbose else f" (log: {log_path})"
    result = None
    try:
        with ProgressReporter(console, args.progress_seconds), _stop_raises_interrupt(), \
                _reported_failures_hidden():
            result = submit()
            if args.no_wait:
                # The job publishes LATEST itself, and fails (alerting whoever watches the
                # runner) when the quality gate does.
                print(f"submitted version {build.version_id} to "
                      f"{pipeline_options.get_all_options()['runner']}; not waiting (--no-wait)")
                return 0
            state = result.wait_until_finish()
    except KeyboardInterrupt:
        cancelled = _cancel(result)  # none to cancel: the local runner stops with this process
        if read_latest(args.output)[0] == build.version_id:
            print(f"catalog-index build: stopped, after version {build.version_id} was "
                  f"published (LATEST names it){log}", file=console)
        else:
            job = "; the job was cancelled" if cancelled else ""
            print(f"catalog-index build: not published: stopped{job}; LATEST is unchanged "
                  f"(rebuild with --replace){log}", file=console)
        return 1
    except Exception as error:  # the runner wraps the worker's exception in its own
        logging.getLogger(__name__).debug("build failed", exc_info=True)
        print(f"catalog-index build: not published: {_root_cause(error)}{log}", file=console)
        return 1
    if state not in (None, PipelineState.DONE):
        print(f"catalog-index build: not published: the job ended {state}{log}", file=console)
        return 1
    try:
        return report_outcome(args.output, build)
    except (OSError, ValueError, KeyError) as error:
        print(f"catalog-index build: the job ended, but its manifest cannot be read from here "
              f"({type(error).__name__}: {error}); on a cluster, --output must be storage "
              f"that the workers and this machine share (gs://){log}", file=console)
        return 1




class _stop_raises_interrupt:
    """SIGTERM (a scheduler stopping the task) ends the wait as Ctrl-C does, so that the
    job is cancelled instead of left running without anyone waiting for it."""

    def __enter__(self):
        # Only the main thread may set a handler (a build run from a thread keeps Python's).
        self.previous = signal.signal(signal.SIGTERM, _raise_interrupt) \
            if threading.current_thread() is threading.main_thread() else None

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _cancel(result) -> bool:
    """Cancel the job behind ``result``; -> whether there was one and it was cancelled."""
    try:
        if result is not None:
            result.cancel()
            return True
    except Exception:  # noqa: BLE001 (some runners cannot cancel; the message says stopped)
        logging.getLogger(__name__).debug("cancel failed", exc_info=True)
    return False


class _HideReportedFailures(logging.Filter):
    """Beam logs a failing worker's whole traceback. For the outcomes the launcher reports
    in one line itself (the quality gate failed, another build published first) that is
    noise; every other failure keeps its traceback."""

    REPORTED = ("QualityGateFailed", "PublishConflict", "PublishFailed")

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += type(record.exc_info[1]).__name__
        return not any(name in text for name in self.REPORTED)


@contextlib.contextmanager
def _reported_failures_hidden():
    """While the job runs, Beam's loggers leave out the tracebacks of failures this module
    reports in one line."""
    loggers = [logging.getLogger(name) for name in
               ("apache_beam.runners.common", "apache_beam.runners.worker.sdk_worker")]
    hide = _HideReportedFailures()
    for logger in loggers:
        logger.addFilter(hide)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(hide)


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Failed|Conflict|Exit)\b.*")


def _root_cause(error: BaseException) -> str:
    """The most specific message in an exception chain, on one line. Runners re-raise a
    worker's exception as the text of its traceback: the last exception line is the cause."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    lines = [line.strip() for line in str(error).splitlines()
             if _EXCEPTION_LINE.match(line.strip())]
    text = lines[-1] if lines else f"{type(error).__name__}: {error}"
    text = re.sub(r"^[\w.]*\.(?=\w+: )", "", text)  # transforms.publish.QualityGateFailed -> ...
    return " ".join(text.split(" [while running")[0].split())[:1000]


def report_outcome(output_root: str, build) -> int:
    """A local run that got here published its version: a failed gate or a lost race
    raises inside the pipeline instead."""
    manifest = versions.read_manifest_at(build.version_dir)
    counts = manifest["counts"]
    print(f"version {manifest['version_id']}: {counts['input']} input, {counts['indexed']} indexed, "
          f"{counts['failed']} failed, {counts['duplicate']} duplicate, "
          f"{len(manifest['index']['shards'])} shards, {manifest['timings']['seconds']:.1f} s")
    print(f"published: {join(output_root, LATEST_FILE)} -> {manifest['version_id']}")
    return 0


