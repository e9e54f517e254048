#!/usr/bin/env bash
# Runs an openwit pipeline on Dataflow with every option a job needs, taken from the
# environment, and the command's own flags from the command line:
#
#   infra/dataflow/launch.sh build --candidates 'gs://BUCKET/lists/*.parquet' \
#       --queries gs://BUCKET/queries/queries.parquet --output gs://BUCKET/corpus
#   infra/dataflow/launch.sh curate ...      (also: candidates, download, queries)
#   DRY_RUN=1 infra/dataflow/launch.sh build ...   translate the graph, submit nothing
#
# Without a command the command is build. Run it where openwit is installed at the same
# commit as the image (the graph is pickled here and unpickled in the image), e.g. from the
# checkout's .venv.
#
# Required environment (`terraform output -raw launch_env` prints the first four):
#   PROJECT           Google Cloud project id
#   REGION            Dataflow region, e.g. us-central1
#   STAGING_BUCKET    bucket for staging/ and tmp/ (or set STAGING_LOCATION and TEMP_LOCATION)
#   SERVICE_ACCOUNT   the workers' service account email
#   IMAGE             the worker image, <region>-docker.pkg.dev/<project>/<repo>/openwit:<tag>
#                     (build_container.sh prints it)
# Optional:
#   MACHINE_TYPE (n2-standard-4)   NUM_WORKERS (2)   MAX_NUM_WORKERS (20)
#   JOB_NAME (openwit-<command>-<UTC time>)   DISK_SIZE_GB   SUBNETWORK (regions/R/subnetworks/S
#   or a full URL)   NO_PUBLIC_IPS=1 (workers then need Cloud NAT to download images)
#   DATAFLOW_SERVICE_OPTIONS (comma list, e.g. enable_prime)   EXPERIMENTS (comma list, added
#   to use_runner_v2)   LABELS (comma list of key=value)   DRY_RUN=1
#   OPENWIT (the openwit executable; default: openwit on PATH, else the checkout's .venv)
#   ALLOW_SECRETS_IN_OPTIONS=1 (let --s3_secret_access_key and the like through; see README)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

die() { echo "launch.sh: $*" >&2; exit 2; }

commands=" candidates curate download build queries "
command=build
if [[ $# -gt 0 && "$1" != -* ]]; then
  command="$1"
  shift
fi
[[ "$commands" == *" $command "* ]] \
  || die "'$command' is not a pipeline command; give one of:$commands(train, eval and the others do not run on Dataflow)"

missing=()
for name in PROJECT REGION SERVICE_ACCOUNT IMAGE; do
  [[ -n "${!name:-}" ]] || missing+=("$name")
done
if [[ -z "${STAGING_BUCKET:-}" && ( -z "${STAGING_LOCATION:-}" || -z "${TEMP_LOCATION:-}" ) ]]; then
  missing+=("STAGING_BUCKET (or STAGING_LOCATION and TEMP_LOCATION)")
fi
if [[ ${#missing[@]} -gt 0 ]]; then
  printf 'launch.sh: missing environment: %s\n' "${missing[@]}" >&2
  echo "launch.sh: \`terraform -chdir=infra/dataflow/terraform output -raw launch_env\` prints PROJECT, REGION, STAGING_BUCKET and SERVICE_ACCOUNT; build_container.sh prints IMAGE" >&2
  exit 2
fi

staging_location="${STAGING_LOCATION:-gs://$STAGING_BUCKET/staging}"
temp_location="${TEMP_LOCATION:-gs://$STAGING_BUCKET/tmp}"
for location in "$staging_location" "$temp_location"; do
  [[ "$location" =~ ^gs://[a-z0-9][a-z0-9._-]{1,61}[a-z0-9](/.*)?$ ]] \
    || die "$location is not a gs://BUCKET/PATH location (Dataflow stages to Cloud Storage)"
done
[[ "$SERVICE_ACCOUNT" == *@*.iam.gserviceaccount.com ]] \
  || die "SERVICE_ACCOUNT=$SERVICE_ACCOUNT is not a service account email (NAME@PROJECT.iam.gserviceaccount.com)"
[[ "$IMAGE" == */*:* || "$IMAGE" == */*@sha256:* ]] \
  || die "IMAGE=$IMAGE: give REGISTRY/PATH:TAG (or @sha256:...), as build_container.sh prints it"

machine_type="${MACHINE_TYPE:-n2-standard-4}"
num_workers="${NUM_WORKERS:-2}"
max_num_workers="${MAX_NUM_WORKERS:-20}"
[[ "$num_workers" =~ ^[0-9]+$ && "$max_num_workers" =~ ^[0-9]+$ ]] \
  || die "NUM_WORKERS and MAX_NUM_WORKERS must be whole numbers"
(( num_workers >= 1 && max_num_workers >= num_workers )) \
  || die "need 1 <= NUM_WORKERS ($num_workers) <= MAX_NUM_WORKERS ($max_num_workers)"

job_name="${JOB_NAME:-openwit-$command-$(date -u +%Y%m%d-%H%M%S)}"
[[ "$job_name" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] \
  || die "JOB_NAME=$job_name: lower-case letters, digits and hyphens, starting with a letter"

# Credentials in pipeline options are part of the job: anyone who can view the job (console,
# `gcloud dataflow jobs describe`) reads them. The image gets AWS credentials from Secret
# Manager instead (README: Writing to S3).
if [[ "${ALLOW_SECRETS_IN_OPTIONS:-0}" != 1 ]]; then
  for arg in "$@"; do
    case "$arg" in
      --s3_access_key_id*|--s3-access-key-id*|--s3_secret_access_key*|--s3-secret-access-key*|--s3_session_token*|--s3-session-token*)
        die "${arg%%=*} would be stored in the Dataflow job's options, visible to anyone who can view the job; put the credentials in Secret Manager (README: Writing to S3), or set ALLOW_SECRETS_IN_OPTIONS=1" ;;
    esac
  done
fi

# The launcher must be the image's code: warn when this checkout is not the commit the image
# is tagged with.
image_tag="${IMAGE##*:}"
if commit="$(git -C "$root" rev-parse --short=12 HEAD 2>/dev/null)"; then
  if [[ "$IMAGE" != *@sha256:* && "$image_tag" != "$commit"* ]]; then
    echo "launch.sh: warning: IMAGE is tagged $image_tag but this checkout is at $commit; the graph is built here and run there" >&2
  fi
fi

if [[ -n "${OPENWIT:-}" ]]; then
  openwit=("$OPENWIT")
elif command -v openwit >/dev/null; then
  openwit=(openwit)
elif [[ -x "$root/.venv/bin/openwit" ]]; then
  openwit=("$root/.venv/bin/openwit")
else
  die "no openwit executable: install openwit[gcp,aws] (make setup) or set OPENWIT"
fi

options=(
  --runner DataflowRunner
  --project "$PROJECT"
  --region "$REGION"
  --job_name "$job_name"
  --staging_location "$staging_location"
  --temp_location "$temp_location"
  --service_account_email "$SERVICE_ACCOUNT"
  # The image holds openwit and every dependency: nothing is staged or pip-installed at start.
  --sdk_container_image "$IMAGE"
  --sdk_location container
  --machine_type "$machine_type"
  --num_workers "$num_workers"
  --max_num_workers "$max_num_workers"
  --autoscaling_algorithm THROUGHPUT_BASED
  # Runner v2 is what runs custom SDK containers; Beam 2.77 uses it for Python anyway.
  --experiments use_runner_v2
)
IFS=, read -r -a extra_experiments <<< "${EXPERIMENTS:-}"
for experiment in "${extra_experiments[@]}"; do
  [[ -n "$experiment" ]] && options+=(--experiments "$experiment")
done
IFS=, read -r -a service_options <<< "${DATAFLOW_SERVICE_OPTIONS:-}"
for service_option in "${service_options[@]}"; do
  [[ -n "$service_option" ]] && options+=(--dataflow_service_options "$service_option")
done
[[ -n "${DISK_SIZE_GB:-}" ]] && options+=(--disk_size_gb "$DISK_SIZE_GB")
[[ -n "${SUBNETWORK:-}" ]] && options+=(--subnetwork "$SUBNETWORK")
[[ "${NO_PUBLIC_IPS:-0}" == 1 ]] && options+=(--no_use_public_ips)
if [[ -n "${LABELS:-}" ]]; then
  IFS=, read -r -a labels <<< "$LABELS"
  for label in "${labels[@]}"; do
    [[ -n "$label" ]] && options+=(--labels "$label")
  done
fi
# Beam's TestOptions flag: the DataflowRunner translates the graph and submits nothing.
[[ "${DRY_RUN:-0}" == 1 ]] && options+=(--dry_run True)

# The command line as it runs, with secret-looking values hidden.
shown=()
hide=0
for arg in "${openwit[@]}" "$command" "$@" "${options[@]}"; do
  if [[ $hide == 1 ]]; then shown+=("***"); hide=0; continue; fi
  case "$arg" in
    --*secret*=*|--*token*=*|--*password*=*|--*access_key*=*) shown+=("${arg%%=*}=***") ;;
    --*secret*|--*token*|--*password*|--*access_key*) shown+=("$arg"); hide=1 ;;
    *) shown+=("$arg") ;;
  esac
done
printf 'launch.sh:'; printf ' %q' "${shown[@]}"; printf '\n'

exec "${openwit[@]}" "$command" "$@" "${options[@]}"
