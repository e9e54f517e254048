"""Shared fixtures. Every server a test talks to is started here, on 127.0.0.1."""

from __future__ import annotations

import logging

import pytest

from helpers import LocalSite


@pytest.fixture
def site():
    local = LocalSite()
    yield local
    local.close()


S3_CREDENTIALS = {"aws_access_key_id": "test", "aws_secret_access_key": "test",
                  "region_name": "us-east-1"}


@pytest.fixture
def s3():
    """A moto S3 server on 127.0.0.1 with a bucket "corpus": (boto3 client, endpoint URL)."""
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
