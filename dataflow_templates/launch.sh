#!/usr/bin/env bash
# Launch one build from the Flex Template on GPU workers.
#   PROJECT=my-project BUCKET=my-bucket dataflow_templates/launch.sh \
#     gs://shop-catalog/catalog.parquet gs://shop-search/image-index [extra parameters]
# GPU settings (override in the environment):
#   GPU_TYPE=nvidia-tesla-t4  GPUS_PER_WORKER=1  MACHINE_TYPE=n1-standard-8  MAX_WORKERS=20
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/env.sh"
catalog="${1:?catalog (gs://...)}"; output="${2:?output root (gs://...)}"; shift 2
: "${GPU_TYPE:=nvidia-tesla-t4}" "${GPUS_PER_WORKER:=1}" "${MACHINE_TYPE:=n1-standard-8}"
: "${MAX_WORKERS:=20}" "${BATCH_SIZE:=128}" "${PRECISION:=mixed}"
job="catalog-index-$(date -u +%Y%m%d-%H%M%S)"
# --parameters uses ^~^ so that the accelerator option may contain ';' and ','.
gcloud dataflow flex-template run "$job" \
  --project "$PROJECT" --region "$REGION" \
  --template-file-gcs-location "$TEMPLATE" \
  --temp-location "gs://${BUCKET}/tmp" \
  --staging-location "gs://${BUCKET}/staging" \
  --worker-machine-type "$MACHINE_TYPE" \
  --max-workers "$MAX_WORKERS" \
  --additional-experiments "use_runner_v2,no_use_multiple_sdk_containers" \
  --parameters "^~^catalog=${catalog}~output=${output}~batch_size=${BATCH_SIZE}~precision=${PRECISION}~sdk_container_image=${IMAGE}~dataflow_service_options=worker_accelerator=type:${GPU_TYPE};count:${GPUS_PER_WORKER};install-nvidia-driver" \
  "$@"
echo "launched $job; follow it at https://console.cloud.google.com/dataflow/jobs?project=${PROJECT}"
