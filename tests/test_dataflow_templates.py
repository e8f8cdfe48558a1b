"""dataflow_templates/: the Flex Template's parameters, image pins, and a Dataflow job graph
with GPU options built offline (nothing is submitted)."""

from __future__ import annotations

import argparse
import json
import os
import re

import pytest

from pipelines.build_index import parse_args, plan_build, submit
from pipelines.options import SWITCHES, add_build_arguments

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATES = os.path.join(HERE, "dataflow_templates")
GPU_OPTION = "worker_accelerator=type:nvidia-tesla-t4;count:1;install-nvidia-driver"
IMAGE = "us-central1-docker.pkg.dev/p/catalog-image-index/catalog-index:test"


def metadata():
    with open(os.path.join(TEMPLATES, "metadata.json")) as stream:
        return json.load(stream)


def examples():
    with open(os.path.join(TEMPLATES, "parameter_examples.json")) as stream:
        return json.load(stream)


def build_options():
    """dest -> argparse action, for every build option of the pipeline."""
    parser = argparse.ArgumentParser()
    add_build_arguments(parser)
    return {action.dest: action for action in parser._actions if action.dest != "help"}


REQUIRED = ["--catalog=gs://shop/catalog.csv", "--output=gs://shop/index"]


def test_every_build_option_is_a_template_parameter_and_required_ones_are_required():
    parameters = {p["name"]: p for p in metadata()["parameters"]}
    options = build_options()
    assert set(parameters) == set(options)
    for name, action in options.items():
        assert parameters[name]["isOptional"] is (not action.required), name
        assert parameters[name]["label"] and parameters[name]["helpText"], name


@pytest.mark.parametrize("parameter", [p["name"] for p in metadata()["parameters"]])
def test_the_pipeline_accepts_each_parameter_as_the_template_passes_it(parameter):
    options = build_options()
    for value in examples()[parameter]["valid"]:
        argv = [arg for arg in REQUIRED if not arg.startswith(f"--{parameter}=")]
        args, _ = parse_args(argv + [f"--{parameter}={value}"])
        if parameter.replace("_", "-") in SWITCHES:  # --full=true, --full=false
            expected = value.lower() in ("true", "1", "yes")
        else:
            expected = options[parameter].type(value) if options[parameter].type else value
        assert getattr(args, parameter) == expected, (parameter, value)


@pytest.mark.parametrize("parameter", [p["name"] for p in metadata()["parameters"]])
def test_regexes_accept_the_documented_examples_and_reject_bad_ones(parameter):
    (spec,) = [p for p in metadata()["parameters"] if p["name"] == parameter]
    assert spec["regexes"], parameter
    for value in examples()[parameter]["valid"]:
        assert all(re.fullmatch(rx, value) for rx in spec["regexes"]), (parameter, value)
    for value in examples()[parameter]["invalid"]:
        assert not all(re.fullmatch(rx, value) for rx in spec["regexes"]), (parameter, value)


def pins_in_setup():
    text = open(os.path.join(HERE, "setup.py")).read()
    return dict(re.findall(r'"([a-z0-9-]+)(?:\[[a-z,-]+\])?==([0-9.]+)"', text))


def test_dockerfile_pins_the_same_versions_as_setup_py():
    dockerfile = open(os.path.join(TEMPLATES, "Dockerfile")).read()
    pins = pins_in_setup()
    beam_image = re.search(r"FROM apache/beam_python(\d+\.\d+)_sdk:([0-9.]+)", dockerfile)
    assert beam_image.group(2) == pins["apache-beam"]
    tensorflow = re.search(r'tensorflow\[and-cuda\]==([0-9.]+)', dockerfile)
    assert tensorflow.group(1) == pins["tensorflow"]
    launcher = re.search(r"python(\d)(\d+)-template-launcher-base", dockerfile)
    assert f"{launcher.group(1)}.{launcher.group(2)}" == beam_image.group(1)
    assert "pip install --no-cache-dir ." in dockerfile  # the rest comes from setup.py's pins
    # Annoy compiled with the portable flags the Makefile uses, before the project's
    # install would compile it for the image builder's CPU.
    assert "COPY native native" in dockerfile
    assert dockerfile.index("sh native/install_annoy.sh python") < \
        dockerfile.index("pip install --no-cache-dir .")


def test_the_image_holds_every_package_and_launches_without_waiting(monkeypatch):
    dockerfile = open(os.path.join(TEMPLATES, "Dockerfile")).read()
    setup = open(os.path.join(HERE, "setup.py")).read()
    listed = re.search(r"find_packages\(include=\[([^\]]*)\]", setup).group(1)
    packages = {name.rstrip("*") for name in re.findall(r'"([a-z_]+\*?)"', listed)}
    assert packages and all(f"COPY {name} {name}" in dockerfile for name in packages), packages
    entry = re.search(r"FLEX_TEMPLATE_PYTHON_PY_FILE=\S*/(pipelines/\w+\.py)", dockerfile).group(1)
    assert entry == "pipelines/flex_template.py"
    from pipelines import flex_template

    launched = []
    monkeypatch.setattr(flex_template, "run", lambda argv: launched.append(argv) or 0)
    assert flex_template.main(["--catalog=gs://b/c.csv", "--output=gs://b/index"]) == 0
    assert launched == [["--catalog=gs://b/c.csv", "--output=gs://b/index", "--no-wait"]]


def test_dataflow_job_with_gpu_workers_is_built_offline(gcs_bucket, photos, model_cache):
    from catalog_index import storage
    from tests.real_images import encode

    storage.write_bytes(f"gs://{gcs_bucket}/images/coffee.jpg", encode(photos["coffee"]))
    args, options = parse_args([
        f"--catalog=gs://{gcs_bucket}/images/*.jpg", f"--output=gs://{gcs_bucket}/index",
        "--num_shards=4", "--batch_size=128", "--precision=mixed",
        "--runner=DataflowRunner", "--project=test-project", "--region=us-central1",
        f"--temp_location=gs://{gcs_bucket}/tmp", "--sdk_location=container",
        f"--sdk_container_image={IMAGE}", f"--dataflow_service_options={GPU_OPTION}",
        "--experiments=use_runner_v2", "--experiments=no_use_multiple_sdk_containers",
        "--machine_type=n1-standard-8", "--no_auth", "--dry_run=True"])
    build = plan_build(args, options)  # no GPU here: the launcher never has one
    assert build.inference_threads == 1  # processes per core on Dataflow
    assert build.model["runtime"] == "auto"  # each worker picks Keras on its GPU
    result = submit(args, options, build)
    from apache_beam.runners.dataflow.internal import apiclient

    # What create_job would send to the service (dry_run stops before staging).
    environment = apiclient.Environment(
        packages=[], options=result.job.options, environment_version="offline",
        proto_pipeline_staged_url=f"gs://{gcs_bucket}/staging/pipeline.pb",
        proto_pipeline=result.job.proto_pipeline).proto
    assert GPU_OPTION in environment.service_options
    assert {"use_runner_v2", "no_use_multiple_sdk_containers"} <= set(environment.experiments)
    (pool,) = environment.worker_pools
    assert pool.machine_type == "n1-standard-8"
    assert [image.container_image for image in pool.sdk_harness_container_images] == [IMAGE]
    stages = str(result.job.proto_pipeline)
    for stage in ("ReadCatalog", "FetchImages", "DecodeAndPreprocess", "Embed", "Caption",
                  "GroupIntoShards", "BuildShards", "Validate", "Report",
                  "Publish"):
        assert stage in stages, stage
