"""Publish: write manifest.json (last inside the version), then LATEST,
and LATEST only when validation passed and only if nobody published since this build read
it (a GCS generation precondition; a lock file locally). A build that loses that race
fails with :class:`catalog_index.storage.PublishConflict`; its version stays intact.

A version that fails validation is kept (manifest, report and all) and the job fails with
:class:`QualityGateFailed`, so that a scheduler (Airflow, Cloud Composer) sees a failed
Dataflow job and pages the on-call engineer, instead of a green job that published nothing.
"""

from __future__ import annotations

import json

import apache_beam as beam

from catalog_index import storage
from catalog_index.schema import LATEST_FILE, MANIFEST_FILE, join
from transforms.errors import counter


class QualityGateFailed(RuntimeError):
    """The version did not pass validation; LATEST was left alone."""


class PublishFailed(RuntimeError):
    """The version is complete and validated, but LATEST could not be written."""


class _PublishVersion(beam.DoFn):
    def __init__(self, output_root: str, version_dir: str, latest_token):
        self.output_root, self.version_dir = output_root, version_dir
        self.latest_token = latest_token

    def process(self, manifest):
        storage.write_text(join(self.version_dir, MANIFEST_FILE), json.dumps(manifest, indent=2))
        if manifest["validation"]["passed"]:
            latest = join(self.output_root, LATEST_FILE)
            try:
                storage.replace_latest(latest, manifest["version_id"] + "\n", self.latest_token)
            except storage.PublishConflict:
                raise
            except Exception as error:  # storage down for longer than the client retries
                raise PublishFailed(
                    f"version {manifest['version_id']} is complete and validated, but {latest} "
                    f"could not be written ({type(error).__name__}); publish it with: "
                    f"catalog-index rollback --index {self.output_root} "
                    f"--version {manifest['version_id']}") from None
            counter("published").inc()
            yield manifest["version_id"]
            return
        counter("validation_failed").inc()
        raise QualityGateFailed(
            f"version {manifest['version_id']} not published: "
            + "; ".join(manifest["validation"]["problems"])
            + f" (see {join(self.version_dir, 'report.html')})")


class Publish(beam.PTransform):
    """``latest_token``: what :func:`catalog_index.storage.read_latest` said when the build
    started; publication succeeds only if LATEST is still as it was then."""

    def __init__(self, output_root: str, version_dir: str, latest_token):
        super().__init__()
        self.output_root, self.version_dir = output_root, version_dir
        self.latest_token = latest_token

    def expand(self, manifests):
        return manifests | "PublishVersion" >> beam.ParDo(
            _PublishVersion(self.output_root, self.version_dir, self.latest_token))
