#!/usr/bin/env bash
# Without Airflow: Cloud Scheduler calls the Dataflow flexTemplates.launch API every night.
#   PROJECT=... BUCKET=... CATALOG=gs://... OUTPUT=gs://... SERVICE_ACCOUNT=...@... \
#     dataflow_templates/schedule/cloud_scheduler.sh
# A failed quality gate fails the job: alert on it with a Cloud Monitoring policy on the
# metric dataflow.googleapis.com/job/is_failed filtered to job names "catalog-index-*".
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
source "$here/env.sh"
: "${CATALOG:?}" "${OUTPUT:?}" "${SERVICE_ACCOUNT:?a service account allowed to launch Dataflow jobs}"
body=$(cat <<JSON
{"launchParameter": {
  "jobName": "catalog-index-nightly",
  "containerSpecGcsPath": "${TEMPLATE}",
  "parameters": {"catalog": "${CATALOG}", "output": "${OUTPUT}", "batch_size": "128",
                 "precision": "mixed", "sdk_container_image": "${IMAGE}",
                 "dataflow_service_options": "worker_accelerator=type:nvidia-tesla-t4;count:1;install-nvidia-driver"},
  "environment": {"machineType": "n1-standard-8", "maxWorkers": 20,
                  "tempLocation": "gs://${BUCKET}/tmp",
                  "additionalExperiments": ["use_runner_v2", "no_use_multiple_sdk_containers"]}}}
JSON
)
gcloud scheduler jobs create http catalog-index-nightly \
  --project "$PROJECT" --location "$REGION" --schedule "0 2 * * *" --time-zone "Etc/UTC" \
  --uri "https://dataflow.googleapis.com/v1b3/projects/${PROJECT}/locations/${REGION}/flexTemplates:launch" \
  --http-method POST --headers "Content-Type=application/json" --message-body "$body" \
  --oauth-service-account-email "$SERVICE_ACCOUNT"
