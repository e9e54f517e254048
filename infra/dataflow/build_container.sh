#!/usr/bin/env bash
# Builds openwit's Dataflow image (infra/dataflow/Dockerfile) for linux/amd64, tags it with
# the git commit it was built from, and pushes it to Artifact Registry. Optionally writes a
# Flex Template spec that launches it.
#
#   REPOSITORY=us-central1-docker.pkg.dev/my-project/openwit infra/dataflow/build_container.sh
#
# Environment:
#   REPOSITORY      required: <region>-docker.pkg.dev/<project>/<repository>
#                   (`terraform output -raw image_repository`)
#   IMAGE_NAME      default openwit
#   TAG             default: the commit (git rev-parse --short=12 HEAD); a tree with
#                   uncommitted changes gets "<commit>-dirty-<UTC time>" (or set ALLOW_DIRTY=0
#                   to refuse it)
#   AWS_SECRET      the Secret Manager secret the image's credential helper reads
#                   (default openwit-aws-credentials)
#   AWS_ROLE_ARN    an AWS role to assume by web identity instead of reading the secret
#   FLEX_TEMPLATE   gs://BUCKET/templates/openwit.json: also build the Flex Template spec there
#   PROJECT         for `gcloud dataflow flex-template build` (default: the repository's)
#   DRY_RUN=1       print the commands instead of running them
#
# Prints the pushed image (IMAGE=...) last, for launch.sh.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

die() { echo "build_container.sh: $*" >&2; exit 2; }
run() {
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    printf '+'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}

[[ -n "${REPOSITORY:-}" ]] || die "set REPOSITORY=<region>-docker.pkg.dev/<project>/<repository> (terraform output -raw image_repository)"
[[ "$REPOSITORY" =~ ^([a-z0-9-]+)-docker\.pkg\.dev/([a-z][a-z0-9-]{4,28}[a-z0-9])/([a-z0-9._-]+)$ ]] \
  || die "REPOSITORY=$REPOSITORY is not <region>-docker.pkg.dev/<project>/<repository>"
registry_host="${BASH_REMATCH[1]}-docker.pkg.dev"
repository_project="${BASH_REMATCH[2]}"

if [[ -z "${TAG:-}" ]]; then
  commit="$(git -C "$root" rev-parse --short=12 HEAD 2>/dev/null)" \
    || die "not a git checkout: set TAG"
  if [[ -n "$(git -C "$root" status --porcelain -- pyproject.toml README.md pipeline model queries infra/dataflow)" ]]; then
    [[ "${ALLOW_DIRTY:-1}" == 1 ]] || die "uncommitted changes; commit them or unset ALLOW_DIRTY"
    TAG="${commit}-dirty-$(date -u +%Y%m%d-%H%M%S)"
    echo "build_container.sh: uncommitted changes: tagging $TAG" >&2
  else
    TAG="$commit"
  fi
fi
image="$REPOSITORY/${IMAGE_NAME:-openwit}:$TAG"

command -v docker >/dev/null || [[ "${DRY_RUN:-0}" == 1 ]] || die "docker is not installed"
command -v gcloud >/dev/null || [[ "${DRY_RUN:-0}" == 1 ]] || die "gcloud is not installed"

# Let docker push to this registry with gcloud's credentials (a credential helper entry in
# ~/.docker/config.json; idempotent).
run gcloud auth configure-docker "$registry_host" --quiet

# Dataflow's workers are x86-64: build for it even on an ARM laptop (buildx emulates).
run docker buildx build \
  --platform linux/amd64 \
  --file "$here/Dockerfile" \
  --build-arg "AWS_SECRET=${AWS_SECRET:-openwit-aws-credentials}" \
  --build-arg "AWS_ROLE_ARN=${AWS_ROLE_ARN:-}" \
  --build-arg "OPENWIT_IMAGE=$image" \
  --label "org.opencontainers.image.revision=$TAG" \
  --tag "$image" \
  --push \
  "$root"

if [[ -n "${FLEX_TEMPLATE:-}" ]]; then
  [[ "$FLEX_TEMPLATE" == gs://*.json ]] || die "FLEX_TEMPLATE=$FLEX_TEMPLATE: give gs://BUCKET/PATH.json"
  # The spec names the image and the parameters (metadata.json); the same image is the
  # launcher and the workers' SDK container (flex_main.py passes it as sdk_container_image).
  run gcloud dataflow flex-template build "$FLEX_TEMPLATE" \
    --image "$image" \
    --sdk-language PYTHON \
    --metadata-file "$here/metadata.json" \
    --project "${PROJECT:-$repository_project}"
fi

echo "IMAGE=$image"
