# openwit on Dataflow: the buckets, identities and image repository a job needs, each
# identity with only what it uses.
#
#   worker service account   runs the Dataflow workers and, for Flex Template launches, the
#                            launcher VM. Dataflow worker role (project), object access on
#                            the two buckets only, read access to the image repository
#                            only, and access to the one AWS credentials secret.
#   launcher service account starts jobs (launch.sh with impersonation, a scheduler, Flex
#                            launches). Dataflow developer (project), actAs on the worker
#                            service account only, objects in the staging bucket (it
#                            stages the pipeline there) and, by default, in the corpus bucket
#                            (openwit's launcher reads inputs and writes stats.json).
#
# Nothing here grants a project-wide storage, secret or registry role, and no secret value is
# in this configuration (or its state): the AWS credentials are added with gcloud.

locals {
  staging_bucket = coalesce(var.staging_bucket, "${var.project}-openwit-dataflow")
  corpus_bucket  = coalesce(var.corpus_bucket, "${var.project}-openwit-corpus")

  apis = toset(concat([
    "dataflow.googleapis.com",             # the jobs
    "compute.googleapis.com",              # their worker VMs
    "storage.googleapis.com",              # staging, temp and corpus buckets
    "artifactregistry.googleapis.com",     # the worker image
    "iam.googleapis.com",                  # the service accounts
    "iamcredentials.googleapis.com",       # impersonating the launcher (gcloud --impersonate-service-account)
    "logging.googleapis.com",              # worker and launcher logs
    "cloudresourcemanager.googleapis.com", # project-level IAM bindings
  ], var.create_aws_secret ? ["secretmanager.googleapis.com"] : []))
}

# ---------------------------------------------------------------------------------- APIs

resource "google_project_service" "apis" {
  for_each = local.apis

  project = var.project
  service = each.value
  # Other workloads in the project may use the same APIs: destroying this configuration
  # must not switch them off.
  disable_on_destroy = false
}

# ------------------------------------------------------------------------------- buckets

# Dataflow's own files: staging/ (the staged pipeline of each job, and template_launches/ of
# Flex launches), tmp/ (temporary files) and templates/ (Flex Template specs, kept).
resource "google_storage_bucket" "staging" {
  name     = local.staging_bucket
  project  = var.project
  location = var.region

  uniform_bucket_level_access = true       # IAM only, no object ACLs
  public_access_prevention    = "enforced" # never public, whatever a binding says
  force_destroy               = false

  # Beam warns when its staging or temp bucket keeps deleted objects (soft delete): every
  # job writes and deletes many temporary files, and soft-deleted bytes are billed.
  soft_delete_policy {
    retention_duration_seconds = 0
  }

  # Temporary files of finished jobs.
  lifecycle_rule {
    condition {
      age            = var.temp_retention_days
      matches_prefix = ["tmp/"]
    }
    action {
      type = "Delete"
    }
  }

  # Staged pipelines and Flex launch records of old jobs.
  lifecycle_rule {
    condition {
      age            = var.staging_retention_days
      matches_prefix = ["staging/"]
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.apis]
}

# openwit's data: candidate lists, query tables, corpora (shards, stats.json, failures/).
resource "google_storage_bucket" "corpus" {
  name     = local.corpus_bucket
  project  = var.project
  location = var.region

  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  # A corpus is days of crawling: `terraform destroy` must not delete it with the bucket.
  force_destroy = false

  depends_on = [google_project_service.apis]
}

# ---------------------------------------------------------------------- image repository

resource "google_artifact_registry_repository" "images" {
  project       = var.project
  location      = var.region
  repository_id = var.name
  format        = "DOCKER"
  description   = "openwit's Dataflow worker and Flex Template launcher image"

  depends_on = [google_project_service.apis]
}

# --------------------------------------------------------------------- service accounts

resource "google_service_account" "worker" {
  project      = var.project
  account_id   = "${var.name}-worker"
  display_name = "openwit Dataflow workers"
  description  = "Runs openwit's Dataflow workers and Flex Template launcher VMs."

  depends_on = [google_project_service.apis]
}

resource "google_service_account" "launcher" {
  project      = var.project
  account_id   = "${var.name}-launcher"
  display_name = "openwit Dataflow launcher"
  description  = "Starts openwit's Dataflow jobs (launch.sh, Flex Template runs, schedulers)."

  depends_on = [google_project_service.apis]
}

# ------------------------------------------------------------------------ worker grants

# What a Dataflow worker needs to talk to the service (work items, progress, metrics). This
# role is only granted at project level.
resource "google_project_iam_member" "worker_dataflow" {
  project = var.project
  role    = "roles/dataflow.worker"
  member  = google_service_account.worker.member
}

# Objects in the staging bucket: workers read the staged pipeline and write temporary
# files; a Flex launcher VM writes the job description under staging/template_launches/.
resource "google_storage_bucket_iam_member" "worker_staging_objects" {
  bucket = google_storage_bucket.staging.name
  role   = "roles/storage.objectAdmin"
  member = google_service_account.worker.member
}

# The bucket's own metadata (storage.buckets.get), which Beam reads at launch to check the
# staging and temp buckets' soft-delete policy; on the staging bucket only.
resource "google_storage_bucket_iam_member" "worker_staging_bucket" {
  bucket = google_storage_bucket.staging.name
  role   = "roles/storage.legacyBucketReader"
  member = google_service_account.worker.member
}

# Objects in the corpus bucket: read inputs, write shards, delete what a killed run left.
# objectAdmin rather than objectCreator + objectViewer: openwit overwrites and deletes.
resource "google_storage_bucket_iam_member" "worker_corpus_objects" {
  bucket = google_storage_bucket.corpus.name
  role   = "roles/storage.objectAdmin"
  member = google_service_account.worker.member
}

# Pull the worker image (workers and Flex launcher VMs pull it as this account).
resource "google_artifact_registry_repository_iam_member" "worker_pulls_images" {
  project    = var.project
  location   = google_artifact_registry_repository.images.location
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.reader"
  member     = google_service_account.worker.member
}

# ---------------------------------------------------------------------- launcher grants

# Create, watch and cancel jobs. (Some organisations also need roles/compute.viewer for the
# machine-type lookup at job creation; add it only if job creation is refused for it.)
resource "google_project_iam_member" "launcher_dataflow" {
  project = var.project
  role    = "roles/dataflow.developer"
  member  = google_service_account.launcher.member
}

# Start jobs whose workers run as the worker service account (actAs) - on that account only,
# not on every service account of the project.
resource "google_service_account_iam_member" "launcher_acts_as_worker" {
  service_account_id = google_service_account.worker.name
  role               = "roles/iam.serviceAccountUser"
  member             = google_service_account.launcher.member
}

# Stage the pipeline, write Flex Template specs, and read them back at launch.
resource "google_storage_bucket_iam_member" "launcher_staging_objects" {
  bucket = google_storage_bucket.staging.name
  role   = "roles/storage.objectAdmin"
  member = google_service_account.launcher.member
}

resource "google_storage_bucket_iam_member" "launcher_staging_bucket" {
  bucket = google_storage_bucket.staging.name
  role   = "roles/storage.legacyBucketReader"
  member = google_service_account.launcher.member
}

# openwit's launcher lists the inputs, checks the output is writable, clears what a killed
# run left and completes stats.json after the job: from launch.sh it does so as the launcher.
resource "google_storage_bucket_iam_member" "launcher_corpus_objects" {
  count = var.launcher_reads_corpus ? 1 : 0

  bucket = google_storage_bucket.corpus.name
  role   = "roles/storage.objectAdmin"
  member = google_service_account.launcher.member
}

# Who may act as the launcher: mint its tokens (gcloud --impersonate-service-account,
# GOOGLE_IMPERSONATE_SERVICE_ACCOUNT) and attach it to a scheduler job.
resource "google_service_account_iam_member" "launcher_token_creators" {
  for_each = toset(var.launcher_members)

  service_account_id = google_service_account.launcher.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = each.value
}

resource "google_service_account_iam_member" "launcher_users" {
  for_each = toset(var.launcher_members)

  service_account_id = google_service_account.launcher.name
  role               = "roles/iam.serviceAccountUser"
  member             = each.value
}

# Who may push images (build_container.sh).
resource "google_artifact_registry_repository_iam_member" "image_pushers" {
  for_each = toset(var.image_pushers)

  project    = var.project
  location   = google_artifact_registry_repository.images.location
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.writer"
  member     = each.value
}

# ------------------------------------------------------------- AWS credentials for s3://

# The secret only: its value (JSON with AccessKeyId, SecretAccessKey[, SessionToken]) is
# added outside Terraform so that it never lands in the state:
#   gcloud secrets versions add openwit-aws-credentials --data-file=- < aws.json
resource "google_secret_manager_secret" "aws_credentials" {
  count = var.create_aws_secret ? 1 : 0

  project   = var.project
  secret_id = var.aws_secret_id

  replication {
    auto {}
  }

  labels = {
    app = "openwit"
  }

  depends_on = [google_project_service.apis]
}

# The workers (and Flex launcher VMs) read this one secret, and no other.
resource "google_secret_manager_secret_iam_member" "worker_reads_aws_credentials" {
  count = var.create_aws_secret ? 1 : 0

  project   = var.project
  secret_id = google_secret_manager_secret.aws_credentials[0].secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.worker.member
}
