#!/usr/bin/env bash
# Build the worker + launcher image with Cloud Build and push it to Artifact Registry.
#   PROJECT=my-project BUCKET=my-bucket dataflow_templates/build_image.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/env.sh"
gcloud artifacts repositories describe "$REPOSITORY" --project "$PROJECT" --location "$REGION" \
  >/dev/null 2>&1 || gcloud artifacts repositories create "$REPOSITORY" --project "$PROJECT" \
  --location "$REGION" --repository-format docker
gcloud builds submit "$here/.." --project "$PROJECT" --region "$REGION" \
  --config /dev/stdin <<YAML
steps:
- name: gcr.io/cloud-builders/docker
  args: [build, -f, dataflow_templates/Dockerfile, -t, "$IMAGE", .]
images: ["$IMAGE"]
timeout: 3600s
YAML
echo "image: $IMAGE"
