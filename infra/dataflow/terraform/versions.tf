# Terraform and provider versions. `google_storage_bucket.soft_delete_policy` needs a
# google provider of 5.x or later; nothing here uses the beta provider.
terraform {
  required_version = ">= 1.5"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 5.30"
    }
  }
}

provider "google" {
  project = var.project
  region  = var.region
}
