"""What a schedule may send to flexTemplates:launch, checked against metadata.json.

Standard library only: ``tests/test_schedule.py`` (the project's venv) and ``check_dag.py``
(the Airflow venv) both use it. Nothing here calls a Google API.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile

TEMPLATES = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Beam / Dataflow pipeline options a launch may pass beside the template's own parameters
# (the launcher hands them to the pipeline). Nothing else is allowed: a name that is in
# neither list is a typo or a renamed parameter. Add an option here when a schedule needs it.
STANDARD_OPTIONS = {
    "sdk_container_image": "WorkerOptions: the worker image (the template's own image)",
    "dataflow_service_options": "GoogleCloudOptions: worker_accelerator=type:...;count:...",
}

# Dataflow job names: lower-case letters, digits and dashes, starting with a letter.
JOB_NAME = re.compile(r"[a-z]([-a-z0-9]{0,1022}[a-z0-9])?")


def load_metadata(templates: str = TEMPLATES) -> dict:
    with open(os.path.join(templates, "metadata.json")) as stream:
        return json.load(stream)


def problems(launch_parameter: dict, metadata: dict) -> list[str]:
    """Why this launchParameter would not start the template's job as meant; [] if none.

    Every parameter is declared in metadata.json (its value a string its regexes accept) or
    is one of STANDARD_OPTIONS, and every required parameter is there.
    """
    declared = {spec["name"]: spec for spec in metadata["parameters"]}
    parameters = launch_parameter.get("parameters", {})
    found = []
    for name, value in parameters.items():
        if name in STANDARD_OPTIONS:
            continue
        if name not in declared:
            found.append(f"parameter {name!r} is not in metadata.json and is not a standard "
                         f"option ({', '.join(sorted(STANDARD_OPTIONS))})")
        elif not isinstance(value, str):
            found.append(f"parameter {name!r} is {type(value).__name__} {value!r}, not a string")
        else:
            for regex in declared[name].get("regexes", []):
                if not re.fullmatch(regex, value):
                    found.append(f"parameter {name}={value!r} does not match {regex}")
    for name, spec in declared.items():
        if not spec.get("isOptional") and name not in parameters:
            found.append(f"required parameter {name!r} (metadata.json) is missing")
    job_name = launch_parameter.get("jobName", "")
    if not JOB_NAME.fullmatch(job_name):
        found.append(f"jobName {job_name!r} is not a Dataflow job name")
    if not launch_parameter.get("containerSpecGcsPath", "").startswith("gs://"):
        found.append("containerSpecGcsPath is not a gs:// template spec")
    return found


# Records its arguments, NUL-separated, one call after another, and calls nothing.
FAKE_GCLOUD = """#!/usr/bin/env bash
printf '%s\\0' gcloud "$@" >> "$FAKE_GCLOUD_CALLS"
"""

SCHEDULER_ENV = {
    "PROJECT": "shop-project", "REGION": "us-central1", "BUCKET": "shop-dataflow",
    "TAG": "abc1234", "CATALOG": "gs://shop-catalog/catalog.parquet",
    "OUTPUT": "gs://shop-search/image-index",
    "SERVICE_ACCOUNT": "index-launcher@shop-project.iam.gserviceaccount.com",
}


def cloud_scheduler_call(templates: str = TEMPLATES, env: dict | None = None) -> dict:
    """Run schedule/cloud_scheduler.sh with a fake gcloud; return its one call's flags.

    {"command": [...words before the first flag], "--flag": value, ...}; the launch body is
    json.loads(call["--message-body"]).
    """
    with tempfile.TemporaryDirectory() as folder:
        gcloud = os.path.join(folder, "gcloud")
        with open(gcloud, "w") as stream:
            stream.write(FAKE_GCLOUD)
        os.chmod(gcloud, 0o755)
        calls = os.path.join(folder, "calls")
        run_env = {"PATH": folder + os.pathsep + os.environ.get("PATH", ""),
                   "FAKE_GCLOUD_CALLS": calls, **SCHEDULER_ENV, **(env or {})}
        script = os.path.join(templates, "schedule", "cloud_scheduler.sh")
        done = subprocess.run(["bash", script], env=run_env, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{script} exited {done.returncode}: {done.stderr.strip()}")
        with open(calls) as stream:
            words = stream.read().split("\0")[:-1]
    if words.count("gcloud") != 1:
        raise ValueError(f"cloud_scheduler.sh ran gcloud {words.count('gcloud')} times, not once")
    call = {"command": []}
    words = iter(words[1:])
    for word in words:
        if word.startswith("--"):
            call[word] = next(words)
        elif len(call) == 1:
            call["command"].append(word)
        else:
            raise ValueError(f"unexpected gcloud argument {word!r}")
    return call
