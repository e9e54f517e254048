# What differs from one deployment to the next. Only `project` has no default; bucket names
# default to "<project>-openwit-..." (bucket names are global: change them if taken).

variable "project" {
  description = "Google Cloud project id that runs the Dataflow jobs."
  type        = string
}

variable "region" {
  description = "Region of the jobs, the buckets and the image repository (keep them together: cross-region reads cost egress)."
  type        = string
  default     = "us-central1"
}

variable "name" {
  description = "Prefix of every resource name (service accounts, repository, secret)."
  type        = string
  default     = "openwit"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{2,16}$", var.name))
    error_message = "name: 3-17 lower-case letters, digits or hyphens, starting with a letter (service account ids are at most 30 characters)."
  }
}

variable "staging_bucket" {
  description = "Bucket for Dataflow's staging (staging/), temporary (tmp/) files and Flex Template specs (templates/). Default: <project>-openwit-dataflow."
  type        = string
  default     = ""
}

variable "corpus_bucket" {
  description = "Bucket for openwit's inputs and outputs (candidate lists, query tables, corpora). Default: <project>-openwit-corpus."
  type        = string
  default     = ""
}

variable "temp_retention_days" {
  description = "Objects under tmp/ in the staging bucket are deleted this many days after they were written (a finished job no longer needs them)."
  type        = number
  default     = 7
}

variable "staging_retention_days" {
  description = "Objects under staging/ (each job's staged pipeline and artifacts) are deleted this many days after they were written; keep it longer than your longest job."
  type        = number
  default     = 30
}

variable "aws_secret_id" {
  description = "Secret Manager secret that holds the AWS credentials for s3:// (JSON with AccessKeyId, SecretAccessKey[, SessionToken]). Its value is never in Terraform: add it with `gcloud secrets versions add`. Must equal the image's OPENWIT_AWS_SECRET (Dockerfile ARG AWS_SECRET)."
  type        = string
  default     = "openwit-aws-credentials"
}

variable "create_aws_secret" {
  description = "Create the AWS credentials secret (and let the workers read it). Set false when s3:// is not used, or when the workers get AWS credentials by web identity federation instead."
  type        = bool
  default     = true
}

variable "launcher_members" {
  description = "Principals (\"user:...\", \"group:...\", \"serviceAccount:...\") allowed to act as the launcher service account: people who run launch.sh with impersonation, or the identity a scheduler runs as."
  type        = list(string)
  default     = []
}

variable "image_pushers" {
  description = "Principals allowed to push images to the repository (roles/artifactregistry.writer on it): whoever runs build_container.sh, or a CI identity."
  type        = list(string)
  default     = []
}

variable "launcher_reads_corpus" {
  description = "Give the launcher service account object access to the corpus bucket. openwit's launcher reads inputs and writes stats.json there before and after the job when it runs outside Dataflow (launch.sh); a Flex launch does that on the launcher VM as the worker service account instead, so Flex-only setups can set this false."
  type        = bool
  default     = true
}
