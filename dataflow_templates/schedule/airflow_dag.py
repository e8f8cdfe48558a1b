"""Nightly reindex on Cloud Composer / Airflow 3 with the Flex Template.

Written for Airflow 3.3 with these providers (``make check-dag`` loads it with exactly the
versions in ``checks/requirements.in``):

- ``apache-airflow-providers-google``: ``DataflowStartFlexTemplateOperator``;
- ``apache-airflow-providers-apache-beam``: the google provider's Dataflow module needs it;
- ``apache-airflow-providers-smtp`` (installed with Airflow): ``SmtpNotifier``.

Parsing this file reads no Variable and no Connection: a scheduler that has none of them
shows the DAG. The task reads these Airflow Variables when it runs (a missing one fails
the task, naming it):

- ``catalog_index_project``: the Google Cloud project of the Dataflow job;
- ``catalog_index_region``: its region (default ``us-central1``);
- ``catalog_index_template``: the template spec, ``gs://BUCKET/templates/catalog-index-TAG.json``;
- ``catalog_index_image``: the image, ``REGION-docker.pkg.dev/PROJECT/catalog-image-index/catalog-index:TAG``;
- ``catalog_index_bucket``: the bucket for temp files (no ``gs://``);
- ``catalog_index_catalog``: the catalog (``gs://...``);
- ``catalog_index_output``: the output root (``gs://...``), where ``LATEST`` lives;
- ``catalog_index_alert_email``: who gets the failure e-mail (default
  ``search-oncall@example.com``), sent through the ``[email] email_conn_id`` SMTP connection.

Each run's choices are DAG params (trigger with a config to change one; defaults in
``PARAMS`` below). The version id is the run's date (``YYYYMMDD``, the logical date of a
scheduled run) unless ``version_id`` is given.

A failed quality gate fails the Dataflow job (the build raises QualityGateFailed after it
has written the version and its report, leaving LATEST alone), so this task fails, Airflow
retries nothing that cannot help (retries=0), and the failure e-mail names the version and
its ``report.html``. To rerun a night, trigger the DAG with the same version and
``{"version_id": "20261201", "replace": true}`` (and, if the report says so,
``max_count_drop`` or ``allow_model_change``).

The launcher submits the job and exits (``pipelines/flex_template.py`` adds ``--no-wait``);
this operator then waits for the job and fails when the job fails.
"""

from __future__ import annotations

import datetime

from airflow.providers.google.cloud.operators.dataflow import DataflowStartFlexTemplateOperator
from airflow.providers.smtp.notifications.smtp import SmtpNotifier
from airflow.sdk import DAG, Param

# Jinja, rendered when the task runs. A manual run may have no logical date in Airflow 3;
# its date is then the time it was asked to run.
RUN_DATE = "(dag_run.logical_date or dag_run.run_after).strftime('%Y%m%d')"
VERSION_ID = "{{ params.version_id or " + RUN_DATE + " }}"
REPORT = ("{{ var.value.get('catalog_index_output', '<catalog_index_output>') }}"
          "/versions/" + VERSION_ID + "/report.html")


def flag(name: str) -> str:
    """A boolean param as the template's parameters spell it."""
    return "{{ 'true' if params.%s else 'false' }}" % name


PARAMS = {
    "version_id": Param(None, type=["null", "string"],
                        description="version folder name; empty: the run's date, YYYYMMDD"),
    "replace": Param(False, type="boolean",
                     description="replace an existing version of that id (a rerun)"),
    "full": Param(False, type="boolean", description="embed every image again"),
    "allow_model_change": Param(False, type="boolean",
                                description="publish although the model changed"),
    "max_count_drop": Param(0.10, type="number", minimum=0, maximum=1,
                            description="quality gate: largest drop in indexed items (the "
                                        "build's default, 0.10)"),
    "batch_size": Param(128, type="integer", minimum=1,
                        description="inference batch per GPU (T4 and L4 have room for 256)"),
    "precision": Param("mixed", enum=["mixed", "float32"], description="inference precision"),
    "machine_type": Param("n1-standard-8", type="string", description="worker machine type"),
    "max_workers": Param(20, type="integer", minimum=1, description="most Dataflow workers"),
    "accelerator": Param("type:nvidia-tesla-t4;count:1;install-nvidia-driver", type="string",
                         description="the workers' GPU (Dataflow's worker_accelerator)"),
}

ON_FAILURE = SmtpNotifier(
    to="{{ var.value.get('catalog_index_alert_email', 'search-oncall@example.com') }}",
    subject="catalog index " + VERSION_ID + " not published: {{ ti.dag_id }}.{{ ti.task_id }} failed",
    html_content=(
        "<p>The nightly catalog index build failed; version <b>" + VERSION_ID + "</b> is not "
        "published and LATEST still names the previous version.</p>"
        "<p>Report (written when the build got as far as the quality gate): " + REPORT + "</p>"
        "<p>Task log: <a href=\"{{ ti.log_url }}\">{{ ti.log_url }}</a>. "
        "What to do next: docs/operations.md, \"When the job fails\".</p>"),
)

with DAG(
    dag_id="catalog_image_index_nightly",
    schedule="0 2 * * *",  # 02:00 UTC, after the catalog export lands
    start_date=datetime.datetime(2026, 11, 1, tzinfo=datetime.timezone.utc),
    catchup=False,
    max_active_runs=1,  # two builds would race for LATEST; one would lose (by design)
    params=PARAMS,
    default_args={
        "owner": "search-platform",
        "retries": 0,  # a failed gate is a decision, not a flake; rerun with replace=true
        "on_failure_callback": ON_FAILURE,
    },
    doc_md=__doc__,
    tags=["search", "dataflow"],
) as dag:
    DataflowStartFlexTemplateOperator(
        task_id="build_index",
        project_id="{{ var.value.catalog_index_project }}",
        location="{{ var.value.get('catalog_index_region', 'us-central1') }}",
        # Wait for the job in this task (deferrable=True would wait in the triggerer instead;
        # both are set so that the [operators] default_deferrable setting changes nothing).
        deferrable=False,
        wait_until_finished=True,
        poll_sleep=60,
        body={"launchParameter": {
            # The operator appends a unique suffix: catalog-index-20261201-1a2b3c4d.
            "jobName": "catalog-index-{{ " + RUN_DATE + " }}",
            "containerSpecGcsPath": "{{ var.value.catalog_index_template }}",
            "parameters": {  # names: dataflow_templates/metadata.json, or Beam options
                "catalog": "{{ var.value.catalog_index_catalog }}",
                "output": "{{ var.value.catalog_index_output }}",
                "version_id": VERSION_ID,
                "replace": flag("replace"),
                "full": flag("full"),
                "allow_model_change": flag("allow_model_change"),
                "max_count_drop": "{{ params.max_count_drop }}",
                "batch_size": "{{ params.batch_size }}",
                "precision": "{{ params.precision }}",
                "sdk_container_image": "{{ var.value.catalog_index_image }}",
                "dataflow_service_options": "worker_accelerator={{ params.accelerator }}",
            },
            "environment": {
                "machineType": "{{ params.machine_type }}",
                "maxWorkers": "{{ params.max_workers }}",  # an int32 in JSON may be a string
                "tempLocation": "gs://{{ var.value.catalog_index_bucket }}/tmp",
                "additionalExperiments": ["use_runner_v2", "no_use_multiple_sdk_containers"],
            },
        }},
    )
