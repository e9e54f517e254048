# What launch.sh and build_container.sh need: `terraform output -raw launch_env` prints lines
# to `eval` (or paste into a file to source) before running them.

output "staging_bucket" {
  description = "Dataflow's staging/temp bucket."
  value       = google_storage_bucket.staging.name
}

output "corpus_bucket" {
  description = "openwit's data bucket (use gs://<it>/... for --candidates, --queries, --output)."
  value       = google_storage_bucket.corpus.name
}

output "temp_location" {
  value = "gs://${google_storage_bucket.staging.name}/tmp"
}

output "staging_location" {
  value = "gs://${google_storage_bucket.staging.name}/staging"
}

output "worker_service_account" {
  description = "--service_account_email of the jobs."
  value       = google_service_account.worker.email
}

output "worker_service_account_unique_id" {
  description = "The worker service account's numeric id: what an AWS role's trust policy names for web identity federation (accounts.google.com:aud and :sub)."
  value       = google_service_account.worker.unique_id
}

output "launcher_service_account" {
  description = "The identity that starts jobs (impersonate it, or run the scheduler as it)."
  value       = google_service_account.launcher.email
}

output "image_repository" {
  description = "Where build_container.sh pushes: <region>-docker.pkg.dev/<project>/<repository>."
  value       = "${google_artifact_registry_repository.images.location}-docker.pkg.dev/${var.project}/${google_artifact_registry_repository.images.repository_id}"
}

output "aws_secret" {
  description = "The Secret Manager secret for AWS credentials (add its value with gcloud), or null."
  value       = var.create_aws_secret ? google_secret_manager_secret.aws_credentials[0].id : null
}

output "launch_env" {
  description = "Environment for infra/dataflow/launch.sh and build_container.sh (IMAGE is set by build_container.sh's output)."
  value       = <<-EOT
    export PROJECT=${var.project}
    export REGION=${var.region}
    export STAGING_BUCKET=${google_storage_bucket.staging.name}
    export SERVICE_ACCOUNT=${google_service_account.worker.email}
    export REPOSITORY=${google_artifact_registry_repository.images.location}-docker.pkg.dev/${var.project}/${google_artifact_registry_repository.images.repository_id}
  EOT
}
