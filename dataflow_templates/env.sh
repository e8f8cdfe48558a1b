# Settings shared by the scripts here. Override any of them in the environment.
: "${PROJECT:?set PROJECT to your Google Cloud project id}"
: "${REGION:=us-central1}"
: "${REPOSITORY:=catalog-image-index}"            # an Artifact Registry Docker repository
: "${BUCKET:?set BUCKET to a gs:// bucket for templates and temp files (no gs:// prefix)}"
: "${TAG:=$(git -C "$(dirname "${BASH_SOURCE[0]}")/.." rev-parse --short HEAD)}"
IMAGE="${REGION}-docker.pkg.dev/${PROJECT}/${REPOSITORY}/catalog-index:${TAG}"
TEMPLATE="gs://${BUCKET}/templates/catalog-index-${TAG}.json"
export PROJECT REGION REPOSITORY BUCKET TAG IMAGE TEMPLATE
