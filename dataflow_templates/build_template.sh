#!/usr/bin/env bash
# Write the Flex Template spec (image + parameters from metadata.json) to Cloud Storage.
#   PROJECT=my-project BUCKET=my-bucket dataflow_templates/build_template.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/env.sh"
gcloud dataflow flex-template build "$TEMPLATE" \
  --project "$PROJECT" \
  --image "$IMAGE" \
  --sdk-language PYTHON \
  --metadata-file "$here/metadata.json"
echo "template: $TEMPLATE"
