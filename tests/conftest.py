"""Shared fixtures. Every server a test talks to is started here, on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import os

import pytest

# google-auth must never look for a GCE metadata server (169.254.169.254): set before anything
# imports it (Beam's FileSystems does, when the gcp extra is installed).
os.environ["NO_GCE_CHECK"] = "true"
os.environ["GCE_METADATA_HOST"] = os.environ["GCE_METADATA_IP"] = "127.0.0.1:9"

from helpers import LocalSite


@pytest.fixture
def site():
    local = LocalSite()
    yield local
    local.close()


S3_CREDENTIALS = {"aws_access_key_id": "test", "aws_secret_access_key": "test",
                  "region_name": "us-east-1"}


@pytest.fixture(scope="session")
def s3():
    """A moto S3 server on 127.0.0.1 with a bucket "corpus": (boto3 client, endpoint URL).
    One per session: moto keeps one store per process anyway, so tests write under their
    own prefixes."""
    boto3 = pytest.importorskip("boto3")
    moto_server = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per S3 request
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, **S3_CREDENTIALS)
    client.create_bucket(Bucket="corpus")
    yield client, endpoint
    server.stop()


@pytest.fixture(scope="session")
def gcs(tmp_path_factory):
    """A GCS emulator (gcp-storage-emulator) on 127.0.0.1 with a bucket "corpus", and the
    environment that points Beam's GCS client at it: its URL. One per session: Beam keeps its
    GCS credentials for the process. Tests write under their own prefixes."""
    pytest.importorskip("apache_beam.io.gcp.gcsio")
    emulator = pytest.importorskip("gcp_storage_emulator.server")
    logging.getLogger("gcp_storage_emulator").setLevel(logging.ERROR)
    folder = tmp_path_factory.mktemp("gcloud")
    # Credentials that need no token server: google-auth takes an authorized_user file whose
    # token has not expired as it is, and the emulator accepts any token.
    credentials = folder / "adc.json"
    credentials.write_text(json.dumps({
        "type": "authorized_user", "client_id": "test", "client_secret": "test",
        "refresh_token": "test", "token": "test", "expiry": "2999-01-01T00:00:00Z"}))
    server = emulator.create_server("127.0.0.1", 0, in_memory=True, default_bucket="corpus")
    server.start()
    url = f"http://127.0.0.1:{server._api._httpd.server_port}"
    environment = {"STORAGE_EMULATOR_HOST": url, "GOOGLE_APPLICATION_CREDENTIALS":
                   str(credentials), "GOOGLE_CLOUD_PROJECT": "test",
                   "CLOUDSDK_CONFIG": str(folder)}
    saved = {name: os.environ.get(name) for name in environment}
    os.environ.update(environment)
    yield url
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    import gc

    gc.collect()  # the emulator's stop waits on connections that only collection closes
    server.stop()
