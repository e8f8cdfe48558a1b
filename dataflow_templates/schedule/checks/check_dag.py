"""``make check-dag``: the nightly DAG as a real Airflow 3.3 loads and renders it.

    .venv-airflow/bin/python dataflow_templates/schedule/checks/check_dag.py [TEMPLATES_DIR]

It runs in a fresh AIRFLOW_HOME (a temporary folder, no database), with every AIRFLOW*
setting of the caller's environment removed, so no Airflow Variable or Connection exists:

1. Load: DagBag loads schedule/ with no import error and no warning while parsing (Airflow 3's
   deprecation warnings included), reads no Variable and no Connection (a recording secrets
   backend sees every lookup, with or without a default), and finds one DAG:
   catalog_image_index_nightly at 02:00 UTC, max_active_runs=1, no catch-up. It serializes
   as the DAG processor stores it.
2. Render: the task's templates render in the context the task runner builds (what
   ``airflow tasks render`` does, without its database: cheaper than ``airflow db migrate``
   plus ``dags reserialize``, and ``airflow dags test`` would launch the job), with the
   Variables set for this step only. The scheduled run after 2026-11-30 02:00 is at
   2026-12-01 02:00 and launches job catalog-index-20261201, version 20261201; a manual
   run without logical date takes version_id and replace from its config. Each body passes
   launch_parameters.problems (metadata.json, or a standard option) and parses as the
   Dataflow API's LaunchFlexTemplateParameter; the failure e-mail names the version and
   its report.html.
3. cloud_scheduler.sh, run with a fake gcloud: the same parameter check, the same schedule.
4. Self-test: on copies of dataflow_templates/, the checks above must fail for a parameter
   renamed in metadata.json only, a Variable read at parse time, and a deprecated argument.
   What they report on those copies is printed as expected ("self-test: ... caught as
   expected"), not as problems of the real folder.
"""

from __future__ import annotations

import copy
import datetime
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
import warnings
from contextlib import contextmanager

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import launch_parameters  # noqa: E402  (standard library only)

DAG_ID = "catalog_image_index_nightly"
TASK_ID = "build_index"
SCHEDULE = {"expression": "0 2 * * *", "timezone": "UTC"}
UTC = datetime.timezone.utc
PREVIOUS_RUN = datetime.datetime(2026, 11, 30, 2, tzinfo=UTC)
EXPECTED_RUN = datetime.datetime(2026, 12, 1, 2, tzinfo=UTC)
# Given for the render step only. The region and alert address are left to their defaults.
VARIABLES = {
    "catalog_index_project": "shop-project",
    "catalog_index_template": "gs://shop-dataflow/templates/catalog-index-abc1234.json",
    "catalog_index_image": "us-central1-docker.pkg.dev/shop-project/catalog-image-index/catalog-index:abc1234",
    "catalog_index_bucket": "shop-dataflow",
    "catalog_index_catalog": "gs://shop-catalog/catalog.parquet",
    "catalog_index_output": "gs://shop-search/image-index",
}
DEPRECATIONS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


def isolate_airflow() -> str:
    """A fresh AIRFLOW_HOME, no AIRFLOW* setting from the caller, the recording backend.

    Called before Airflow is imported. (DagBag imports this file too, as it imports every
    file in schedule/ that mentions Airflow and DAGs: at import it must change nothing.)
    """
    for name in list(os.environ):
        if name.startswith(("AIRFLOW", "_AIRFLOW")):
            del os.environ[name]
    home = tempfile.mkdtemp(prefix="check-dag-airflow-home-")
    os.environ.update({
        "AIRFLOW_HOME": home,
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__SECRETS__BACKEND": "recording_secrets.RecordingBackend",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "ERROR",
    })
    return home


def load(dag_folder: str):
    """The DagBag of a folder, the warnings raised while loading it, the secrets it read."""
    import recording_secrets
    from airflow.dag_processing.dagbag import DagBag

    recording_secrets.READS.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bag = DagBag(dag_folder)
    return bag, caught, list(recording_secrets.READS)


def load_problems(bag, caught, reads) -> list[str]:
    found = [f"import error in {path}: {error.strip().splitlines()[-1]}"
             for path, error in bag.import_errors.items()]
    found += [f"warning while parsing {w}" for ws in bag.captured_warnings.values() for w in ws]
    found += [f"{w.category.__name__} while loading: {w.message} ({w.filename}:{w.lineno})"
              for w in caught if issubclass(w.category, DEPRECATIONS)]
    found += [f"parsing read {read}: read it in a template ({{{{ var.value.NAME }}}}) instead"
              for read in reads]
    if found:
        return found
    if sorted(bag.dags) != [DAG_ID]:
        return [f"expected one DAG, {DAG_ID}; found {sorted(bag.dags)}"]
    dag = bag.dags[DAG_ID]
    timetable = serialized(dag).timetable.serialize()
    if {key: timetable.get(key) for key in SCHEDULE} != SCHEDULE:
        found.append(f"schedule {timetable}, expected {SCHEDULE}")
    if dag.max_active_runs != 1 or dag.catchup:
        found.append(f"max_active_runs={dag.max_active_runs}, catchup={dag.catchup}: "
                     "expected 1 and False (two builds would race for LATEST)")
    if [task.task_id for task in dag.tasks] != [TASK_ID]:
        found.append(f"tasks {[task.task_id for task in dag.tasks]}, expected [{TASK_ID!r}]")
    return found


def serialized(dag):
    """The DAG as the scheduler sees it, after the round trip through its serialized form."""
    from airflow.serialization.serialized_objects import DagSerialization

    return DagSerialization.from_dict(DagSerialization.to_dict(dag))


@contextmanager
def variables(values: dict):
    """Airflow Variables, as AIRFLOW_VAR_* in the environment, for the duration only."""
    names = {f"AIRFLOW_VAR_{key.upper()}": value for key, value in values.items()}
    os.environ.update(names)
    try:
        yield
    finally:
        for name in names:
            del os.environ[name]


def scheduled_run(dag):
    """(logical date, data interval) of the run the scheduler starts after PREVIOUS_RUN."""
    from airflow.timetables.base import DataInterval, TimeRestriction

    scheduler_dag = serialized(dag)
    info = scheduler_dag.timetable.next_dagrun_info(
        last_automated_data_interval=DataInterval(PREVIOUS_RUN, PREVIOUS_RUN),
        restriction=TimeRestriction(earliest=scheduler_dag.start_date, latest=None, catchup=True))
    return info.logical_date, info.data_interval


def render(dag, *, logical_date, data_interval, run_after, conf=None):
    """The task and its failure notifier, rendered for one run (the DAG is left as it was)."""
    from airflow.cli.commands.task_command import _get_template_context
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.state import DagRunState
    from airflow.utils.types import DagRunType

    dag = copy.deepcopy(dag)
    run_type = DagRunType.SCHEDULED if logical_date else DagRunType.MANUAL
    dag_run = DagRun(dag_id=dag.dag_id, run_id=f"{run_type.value}__{run_after.isoformat()}",
                     run_type=run_type, logical_date=logical_date, data_interval=data_interval,
                     run_after=run_after, state=DagRunState.RUNNING, conf=conf)
    task = dag.get_task(TASK_ID)
    ti = TaskInstance(serialized(dag).get_task(TASK_ID), run_id=dag_run.run_id, map_index=-1,
                      dag_version_id=uuid.uuid4())
    ti.dag_run = dag_run
    context = _get_template_context(ti, task)
    task.render_template_fields(context)
    notifiers = task.on_failure_callback or []
    for notifier in notifiers:
        notifier.render_template_fields(context)
    return task, notifiers


def launch_problems(launch_parameter: dict, metadata: dict, where: str) -> list[str]:
    from google.cloud.dataflow_v1beta3 import LaunchFlexTemplateParameter

    found = [f"{where}: {problem}"
             for problem in launch_parameters.problems(launch_parameter, metadata)]
    try:
        LaunchFlexTemplateParameter.from_json(json.dumps(launch_parameter))
    except Exception as error:  # the API's own JSON mapping: unknown fields, wrong types
        found.append(f"{where}: not a LaunchFlexTemplateParameter: {error}")
    return found


def expect(found: list[str], where: str, actual, expected) -> None:
    if actual != expected:
        found.append(f"{where}: {actual!r}, expected {expected!r}")


def render_problems(dag, metadata: dict, say) -> list[str]:
    found = []
    output = VARIABLES["catalog_index_output"]
    logical_date, interval = scheduled_run(dag)
    expect(found, "the scheduled run after 2026-11-30 02:00", logical_date, EXPECTED_RUN)
    runs = [  # where, run, expected (job name, version_id, replace)
        ("scheduled run", dict(logical_date=logical_date, data_interval=interval,
                               run_after=logical_date),
         ("catalog-index-20261201", "20261201", "false")),
        ("manual rerun", dict(logical_date=None, data_interval=None,
                              run_after=datetime.datetime(2026, 12, 2, 9, 30, tzinfo=UTC),
                              conf={"version_id": "20261130", "replace": True}),
         ("catalog-index-20261202", "20261130", "true")),
    ]
    with variables(VARIABLES):
        for where, run, (job_name, version_id, replace) in runs:
            task, notifiers = render(dag, **run)
            launch = task.body["launchParameter"]
            found += launch_problems(launch, metadata, f"{where}, rendered body")
            parameters = launch.get("parameters", {})
            expect(found, f"{where}: jobName", launch.get("jobName"), job_name)
            expect(found, f"{where}: version_id", parameters.get("version_id"), version_id)
            expect(found, f"{where}: replace", parameters.get("replace"), replace)
            expect(found, f"{where}: catalog", parameters.get("catalog"),
                   VARIABLES["catalog_index_catalog"])
            expect(found, f"{where}: project_id", task.project_id, "shop-project")
            expect(found, f"{where}: location (default)", task.location, "us-central1")
            expect(found, f"{where}: waits for the job", (task.wait_until_finished,
                                                          task.deferrable), (True, False))
            report = f"{output}/versions/{version_id}/report.html"
            mails = [n for n in notifiers if type(n).__name__ == "SmtpNotifier"]
            if len(mails) != 1:
                found.append(f"{where}: {len(mails)} SmtpNotifier failure callbacks, expected 1")
            say(f"{where}: job {launch.get('jobName')}, version_id {parameters.get('version_id')}, "
                f"replace {parameters.get('replace')}, {len(parameters)} parameters")
            for mail in mails:
                say(f"{where}: failure e-mail to {mail.to}: {mail.subject!r}")
                expect(found, f"{where}: failure e-mail to", mail.to, "search-oncall@example.com")
                if version_id not in mail.subject or report not in mail.html_content:
                    found.append(f"{where}: the failure e-mail does not name version "
                                 f"{version_id} and {report}: {mail.subject!r}")
    return found


def cloud_scheduler_problems(templates: str, metadata: dict, say) -> list[str]:
    call = launch_parameters.cloud_scheduler_call(templates)
    body = json.loads(call["--message-body"])
    say(f"cloud_scheduler.sh: job {body['launchParameter'].get('jobName')} at "
        f"{call.get('--schedule')} {call.get('--time-zone')}, "
        f"{len(body['launchParameter'].get('parameters', {}))} parameters")
    found = launch_problems(body["launchParameter"], metadata, "cloud_scheduler.sh")
    expect(found, "cloud_scheduler.sh schedule", (call.get("--schedule"), call.get("--time-zone")),
           (SCHEDULE["expression"], "Etc/UTC"))
    return found


def check(templates: str, say=lambda line: None) -> list[str]:
    """Every problem with the schedules in this dataflow_templates folder; [] if none."""
    metadata = launch_parameters.load_metadata(templates)
    bag, caught, reads = load(os.path.join(templates, "schedule"))
    found = load_problems(bag, caught, reads)
    if not found:
        say(f"DagBag: {bag.size()} DAG ({', '.join(bag.dags)}) from {len(bag.file_last_changed)} "
            "files, no import error, no warning, no Variable or Connection read")
        found += render_problems(bag.dags[DAG_ID], metadata, say)
    return found + cloud_scheduler_problems(templates, metadata, say)


def rename_parameter(copy_of_templates: str, old: str = "batch_size",
                     new: str = "inference_batch_size") -> None:
    path = os.path.join(copy_of_templates, "metadata.json")
    metadata = launch_parameters.load_metadata(copy_of_templates)
    (spec,) = [spec for spec in metadata["parameters"] if spec["name"] == old]
    spec["name"] = new
    with open(path, "w") as stream:
        json.dump(metadata, stream, indent=2)


def edit_dag(old: str, new: str):
    def edit(copy_of_templates: str) -> None:
        path = os.path.join(copy_of_templates, "schedule", "airflow_dag.py")
        text = open(path).read()
        if old not in text:
            raise AssertionError(f"self-test: {old!r} is no longer in airflow_dag.py")
        with open(path, "w") as stream:
            stream.write(text.replace(old, new, 1))
    return edit


SELF_TESTS = [  # what is broken, how, words the check must say
    ("batch_size renamed in metadata.json, not in the schedules", rename_parameter,
     "parameter 'batch_size' is not in metadata.json"),
    ("a Variable read (with a default) at parse time",
     edit_dag("from airflow.sdk import DAG, Param\n",
              "from airflow.sdk import DAG, Param, Variable\n"
              "PROJECT = Variable.get('catalog_index_project', default='unset')\n"),
     "parsing read Variable catalog_index_project"),
    ("email_on_failure, deprecated in Airflow 3",
     edit_dag('"retries": 0,', '"retries": 0, "email": ["x@example.com"], '
                               '"email_on_failure": True,'),
     "email_on_failure"),
]


def self_test(templates: str, say=print) -> list[str]:
    """What the checks failed to catch on broken copies of the folder; [] if they caught all.

    Each copy is broken on purpose, so every problem found on it is expected, and the lines
    say so: they must not read as errors of the real folder."""
    missed = []
    say(f"self-test: {len(SELF_TESTS)} copies of dataflow_templates/ broken on purpose; "
        "the checks must catch each break")
    for what, breaks, says in SELF_TESTS:
        with tempfile.TemporaryDirectory() as folder:
            broken = os.path.join(folder, "dataflow_templates")
            shutil.copytree(templates, broken, ignore=shutil.ignore_patterns("__pycache__"))
            breaks(broken)
            found = check(broken)
        if any(says in problem for problem in found):
            say(f"self-test: {what}: caught as expected")
            for problem in found:
                say(f"  self-test, expected on the broken copy: {problem}")
        else:
            say(f"self-test: {what}: MISSED (no problem says {says!r})")
            for problem in found:
                say(f"  self-test, reported on the broken copy instead: {problem}")
            missed.append(f"self-test: {what} was not caught (no problem says {says!r})")
    return missed


def main(argv: list[str]) -> int:
    templates = os.path.abspath(argv[0] if argv else launch_parameters.TEMPLATES)
    started = time.monotonic()
    airflow_home = isolate_airflow()
    try:
        import airflow.dag_processing.dagbag  # noqa: F401  (timed apart: most of the cost)

        imported = time.monotonic()
        problems = check(templates, say=lambda line: print(f"check-dag: {line}"))
        for problem in problems:
            print(f"check-dag: {problem}")
        checked = time.monotonic()
        problems += self_test(templates, say=lambda line: print(f"check-dag: {line}"))
    finally:
        shutil.rmtree(airflow_home, ignore_errors=True)
    done = time.monotonic()
    print(f"check-dag: {'FAILED' if problems else 'passed'} in {done - started:.1f} s "
          f"(importing Airflow {imported - started:.1f} s, checks {checked - imported:.1f} s, "
          f"self-test {done - checked:.1f} s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
