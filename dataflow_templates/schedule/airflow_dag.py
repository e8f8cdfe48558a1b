"""Nightly reindex on Cloud Composer / Airflow with the Flex Template.

A failed quality gate fails the Dataflow job (the build raises QualityGateFailed after it
has written the version and its report, leaving LATEST alone), so this task fails, Airflow
retries nothing that cannot help (retries=0), and the on-call engineer gets the failure
e-mail (or your on_failure_callback: PagerDuty, Slack, ...) with the job link. The
report to look at is gs://.../versions/<run date>/report.html.

Set the Airflow Variables catalog_index_project, catalog_index_region,
catalog_index_template (gs://.../catalog-index-<tag>.json), catalog_index_image,
catalog_index_bucket, catalog_index_catalog and catalog_index_output.
"""

from __future__ import annotations

import datetime

from airflow import DAG
from airflow.models import Variable
from airflow.providers.google.cloud.operators.dataflow import DataflowStartFlexTemplateOperator

DEFAULT_ARGS = {
    "owner": "search-platform",
    "retries": 0,  # a failed gate is a decision, not a flake; rerun by hand with replace=true
    "email": ["search-oncall@example.com"],
    "email_on_failure": True,
}

with DAG(
    dag_id="catalog_image_index_nightly",
    schedule="0 2 * * *",  # 02:00 UTC, after the catalog export lands
    start_date=datetime.datetime(2026, 11, 1),
    catchup=False,
    max_active_runs=1,  # two builds would race for LATEST; one would lose (by design)
    default_args=DEFAULT_ARGS,
    tags=["search", "dataflow"],
) as dag:
    DataflowStartFlexTemplateOperator(
        task_id="build_index",
        project_id=Variable.get("catalog_index_project"),
        location=Variable.get("catalog_index_region"),
        wait_until_finished=True,
        body={"launchParameter": {
            "jobName": "catalog-index-{{ ds_nodash }}",
            "containerSpecGcsPath": Variable.get("catalog_index_template"),
            "parameters": {
                "catalog": Variable.get("catalog_index_catalog"),
                "output": Variable.get("catalog_index_output"),
                "version_id": "{{ ds_nodash }}",
                "batch_size": "128",
                "precision": "mixed",
                "sdk_container_image": Variable.get("catalog_index_image"),
                "dataflow_service_options":
                    "worker_accelerator=type:nvidia-tesla-t4;count:1;install-nvidia-driver",
            },
            "environment": {
                "machineType": "n1-standard-8",
                "maxWorkers": 20,
                "tempLocation": "gs://{}/tmp".format(Variable.get("catalog_index_bucket")),
                "additionalExperiments": ["use_runner_v2", "no_use_multiple_sdk_containers"],
            },
        }},
    )
