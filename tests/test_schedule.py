"""dataflow_templates/schedule/: what the nightly schedules launch, against metadata.json.

The Airflow DAG needs Airflow, which this venv does not have: `make check-dag` loads and
renders it in .venv-airflow (and `make test` runs it). Here: cloud_scheduler.sh, run with a
fake gcloud (no Google API is called), the shared parameter check, and the check-dag wiring.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess

import pytest

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATES = os.path.join(HERE, "dataflow_templates")
CHECKS = os.path.join(TEMPLATES, "schedule", "checks")


def _load_launch_parameters():
    spec = importlib.util.spec_from_file_location(
        "launch_parameters", os.path.join(CHECKS, "launch_parameters.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


launch_parameters = _load_launch_parameters()


def test_cloud_scheduler_launches_the_template_with_declared_parameters_only():
    call = launch_parameters.cloud_scheduler_call()
    env = launch_parameters.SCHEDULER_ENV
    assert call["command"] == ["scheduler", "jobs", "create", "http", "catalog-index-nightly"]
    assert (call["--schedule"], call["--time-zone"]) == ("0 2 * * *", "Etc/UTC")
    assert call["--uri"] == ("https://dataflow.googleapis.com/v1b3/projects/shop-project/"
                             "locations/us-central1/flexTemplates:launch")
    launch = json.loads(call["--message-body"])["launchParameter"]
    assert launch_parameters.problems(launch, launch_parameters.load_metadata()) == []
    assert launch["parameters"]["catalog"] == env["CATALOG"]
    assert launch["parameters"]["output"] == env["OUTPUT"]
    assert launch["containerSpecGcsPath"] == "gs://shop-dataflow/templates/catalog-index-abc1234.json"


def test_the_check_fails_when_a_parameter_is_renamed_in_metadata_json_only(tmp_path):
    copy = tmp_path / "dataflow_templates"
    shutil.copytree(TEMPLATES, copy, ignore=shutil.ignore_patterns("__pycache__"))
    metadata = launch_parameters.load_metadata(str(copy))
    (catalog,) = [spec for spec in metadata["parameters"] if spec["name"] == "catalog"]
    catalog["name"] = "catalog_uri"
    (copy / "metadata.json").write_text(json.dumps(metadata))

    call = launch_parameters.cloud_scheduler_call(str(copy))
    launch = json.loads(call["--message-body"])["launchParameter"]
    found = launch_parameters.problems(launch, launch_parameters.load_metadata(str(copy)))
    assert any("parameter 'catalog' is not in metadata.json" in p for p in found), found
    assert any("required parameter 'catalog_uri'" in p for p in found), found


def test_the_check_reads_values_types_and_job_names():
    launch = {"jobName": "Catalog_Index", "containerSpecGcsPath": "catalog-index.json",
              "parameters": {"catalog": "/local/catalog.csv", "output": "gs://shop/index",
                             "batch_size": 128, "sdk_container_image": "any image"}}
    found = launch_parameters.problems(launch, launch_parameters.load_metadata())
    assert len(found) == 4, found
    assert "parameter catalog='/local/catalog.csv' does not match" in found[0]
    assert "parameter 'batch_size' is int 128, not a string" in found[1]
    assert "jobName 'Catalog_Index'" in found[2] and "containerSpecGcsPath" in found[3]


@pytest.mark.parametrize("name", sorted(launch_parameters.STANDARD_OPTIONS))
def test_each_allowed_standard_option_is_a_beam_pipeline_option(name):
    from apache_beam.options.pipeline_options import PipelineOptions

    assert PipelineOptions([f"--{name}=x"]).get_all_options()[name] in ("x", ["x"])


def test_no_standard_option_shadows_a_template_parameter():
    names = {spec["name"] for spec in launch_parameters.load_metadata()["parameters"]}
    assert not names & set(launch_parameters.STANDARD_OPTIONS)


def test_the_airflow_lock_pins_what_requirements_in_asks_for():
    def pins(name):
        with open(os.path.join(CHECKS, name)) as stream:
            return dict(re.findall(r"^([a-z0-9-]+)==([^\s;]+)", stream.read(), re.M))

    wanted, locked = pins("requirements.in"), pins("requirements.txt")
    assert wanted and {name: locked.get(name) for name in wanted} == wanted


def test_make_test_runs_check_dag_and_ci_runs_make_test():
    plan = subprocess.run(["make", "-n", "test"], cwd=HERE, capture_output=True, text=True,
                          check=True).stdout
    assert "checks/check_dag.py" in plan
    assert open(os.path.join(HERE, ".ci", "run")).read().strip().endswith("make test")
    assert "make check-dag" in open(os.path.join(HERE, "README.md")).read()
