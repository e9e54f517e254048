"""The fault-injecting proxy (tests/fault_proxy.py), against a moto S3 server on 127.0.0.1.

Other tests trust the proxy to do two things: be invisible when it injects nothing, and inject
exactly the faults its plan asks for, reproducibly. These tests check both, with boto3 as the
client, because boto3's retries are what the faults exist to exercise."""

from __future__ import annotations

import collections
import hashlib
import http.client
import io
import logging
import random
import socket
import threading
import time

import pytest

from fault_proxy import FAILING_FAULTS, FaultPlan, FaultProxy, only_uploads, path_contains

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")
from boto3.s3.transfer import TransferConfig  # noqa: E402
from botocore.auth import S3SigV4Auth  # noqa: E402
from botocore.awsrequest import AWSRequest  # noqa: E402
from botocore.config import Config  # noqa: E402
from botocore.credentials import Credentials  # noqa: E402
from botocore.exceptions import ClientError, ConnectionClosedError  # noqa: E402
from botocore.retries import standard as standard_retries  # noqa: E402

pytestmark = pytest.mark.slow

MiB = 2 ** 20
# S3 (and moto) refuse parts under 5 MiB other than the last, so three parts need just over 10.
MULTIPART = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB,
                           max_concurrency=3)
BIG = random.Random(0).randbytes(10 * MiB + 4321)
SMALL = [random.Random(i).randbytes(1000 + 37 * i) for i in range(3)]


@pytest.fixture(scope="module")
def upstream():
    """One moto server for the module; each test uses a bucket of its own."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def s3_client(endpoint, **retries):
    """Timeouts well under the test's budget, so that a proxy bug fails a test, not hangs it.

    Mind botocore's two spellings: in a Config, `max_attempts` counts the retries (10 means
    up to 11 requests), `total_max_attempts` counts the requests."""
    config = Config(s3={"addressing_style": "path"}, connect_timeout=5, read_timeout=15,
                    retries={"mode": "standard", **(retries or {"max_attempts": 10})})
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test",
                        aws_secret_access_key="test", region_name="us-east-1", config=config)


@pytest.fixture
def bucket(upstream, request):
    """A bucket named after the test: the bucket is part of every path, and so of every
    request's draw, so a random name would make the faults differ from run to run."""
    name = "fp-" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:16]
    s3_client(upstream).create_bucket(Bucket=name)
    return name


@pytest.fixture
def no_backoff(monkeypatch):
    """botocore waits up to a second, then two, before retrying a SlowDown; the tests want the
    retries, not the waiting."""
    monkeypatch.setattr(standard_retries.ExponentialBackoff, "delay_amount",
                        lambda self, context: 0.0)


def read(client, bucket, key):
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


def test_without_faults_the_proxy_is_invisible(upstream, bucket):
    with FaultProxy(upstream) as proxy:
        client = s3_client(proxy.url)
        client.put_object(Bucket=bucket, Key="small/0", Body=SMALL[0])
        client.put_object(Bucket=bucket, Key="small/1", Body=io.BytesIO(SMALL[1]))
        client.upload_fileobj(io.BytesIO(BIG), bucket, "big", Config=MULTIPART)

        assert read(client, bucket, "small/0") == SMALL[0]
        assert read(client, bucket, "small/1") == SMALL[1]
        assert read(client, bucket, "big") == BIG
        ranged = client.get_object(Bucket=bucket, Key="big", Range="bytes=100-199")
        assert ranged["Body"].read() == BIG[100:200]
        assert client.head_object(Bucket=bucket, Key="big")["ContentLength"] == len(BIG)
        listed = client.list_objects_v2(Bucket=bucket)["Contents"]
        assert {o["Key"]: o["Size"] for o in listed} == {
            "small/0": len(SMALL[0]), "small/1": len(SMALL[1]), "big": len(BIG)}
        client.delete_object(Bucket=bucket, Key="small/0")
        left = client.list_objects_v2(Bucket=bucket, Prefix="small/")["Contents"]
        assert [o["Key"] for o in left] == ["small/1"]
        # What went through is what moto stored: read back past the proxy.
        assert read(s3_client(upstream), bucket, "big") == BIG

        assert not proxy.faults
        assert all(isinstance(outcome, int) and outcome < 300 for _, _, outcome in proxy.requests)
        assert proxy.connections < len(proxy.requests)  # keep-alive connections were reused
        uploads = [(path, dict((k.lower(), v) for k, v in headers))
                   for method, path, headers in proxy.request_headers if method == "PUT"]
        assert sum(path.endswith("/big") for path, _ in uploads) == 3  # it was a multipart upload
        for _, headers in uploads:
            # boto3 over http: a plain Content-Length body (no chunked or aws-chunked framing),
            # a signed payload hash, and its default CRC32 checksum in a header, not a trailer.
            assert "transfer-encoding" not in headers and "content-length" in headers
            assert "aws-chunked" not in headers.get("content-encoding", "")
            assert headers["x-amz-content-sha256"] != "UNSIGNED-PAYLOAD"
            assert headers["x-amz-checksum-crc32"]


def signed_headers(method, url, data):
    """SigV4 headers for a request made by hand (moto refuses anonymous access to an existing
    object)."""
    request = AWSRequest(method=method, url=url, data=data)
    S3SigV4Auth(Credentials("test", "test"), "s3", "us-east-1").add_auth(request)
    return dict(request.headers.items())


def test_a_chunked_request_body_is_forwarded_intact(upstream, bucket):
    """boto3 sends chunked (aws-chunked) bodies only over https, but other clients do not wait
    for that: the framing must reach the server intact, and the connection stay usable."""
    data = random.Random(5).randbytes(200_000)
    pieces = [data[i:i + 65_000] for i in range(0, len(data), 65_000)]
    with FaultProxy(upstream) as proxy:
        url = f"{proxy.url}/{bucket}/chunked"
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        conn.request("PUT", f"/{bucket}/chunked", body=iter(pieces), encode_chunked=True,
                     headers=signed_headers("PUT", url, data))
        response = conn.getresponse()
        response.read()
        assert response.status == 200
        # The same connection, after a chunked body.
        conn.request("GET", f"/{bucket}/chunked", headers=signed_headers("GET", url, b""))
        response = conn.getresponse()
        assert response.status == 200 and response.read() == data
        conn.close()
        headers = dict(proxy.request_headers[0][2])
        assert headers.get("Transfer-Encoding") == "chunked"
        assert proxy.connections == 1
    assert read(s3_client(upstream), bucket, "chunked") == data


FAULTS = {
    "slow_down": dict(slow_down=0.5),
    "reset": dict(reset=0.5),
    "reset_mid_upload": dict(reset_mid_upload=0.6),
    # A CompleteMultipartUpload that is applied, then retried, finds its upload gone (moto says
    # NoSuchUpload); a lost response is only safe for requests that can be repeated.
    "reset_after_forward": dict(reset_after_forward=0.5,
                                only=lambda method, path, query: not (
                                    method == "POST" and "uploadId=" in query)),
    "delay": dict(delay=0.5, delay_seconds=0.05),
    "trickle": dict(trickle=0.5, trickle_seconds=0.05),
}


@pytest.mark.parametrize("kind", FAULTS)
def test_each_fault_is_injected_and_boto3_retries_through_it(upstream, bucket, no_backoff, kind):
    with FaultProxy(upstream, FaultPlan(seed=7, **FAULTS[kind])) as proxy:
        client = s3_client(proxy.url, max_attempts=10)
        for i, body in enumerate(SMALL):
            client.put_object(Bucket=bucket, Key=f"small/{i}", Body=body)
        client.upload_fileobj(io.BytesIO(BIG), bucket, "big", Config=MULTIPART)
        for i, body in enumerate(SMALL):
            assert read(client, bucket, f"small/{i}") == body
        assert read(client, bucket, "big") == BIG
        assert proxy.faults[kind] > 0
        assert set(proxy.faults) == {kind}
        if kind in FAILING_FAULTS:
            assert sum(outcome == kind for *_, outcome in proxy.requests) == proxy.faults[kind]
    assert read(s3_client(upstream), bucket, "big") == BIG


@pytest.mark.parametrize("cap", [2, None])
def test_the_cap_on_faults_in_a_row_lets_a_patient_client_through(upstream, bucket, no_backoff,
                                                                   cap):
    """Every request is throttled, yet with a cap of 2 a client allowed 3 attempts always gets
    through; without the cap it gives up on S3's own SlowDown error."""
    with FaultProxy(upstream, FaultPlan(seed=1, slow_down=1.0, max_faults_in_a_row=cap)) as proxy:
        client = s3_client(proxy.url, total_max_attempts=3)
        key_path = f"/{bucket}/k"
        if cap is None:
            with pytest.raises(ClientError) as caught:
                client.put_object(Bucket=bucket, Key="k", Body=b"data")
            error = caught.value.response
            assert error["Error"]["Code"] == "SlowDown"
            assert error["Error"]["Message"] == "Please reduce your request rate."
            assert error["ResponseMetadata"]["HTTPStatusCode"] == 503
            assert proxy.requests == [("PUT", key_path, "slow_down")] * 3
        else:
            for _ in range(2):
                client.put_object(Bucket=bucket, Key="k", Body=b"data")
            assert read(client, bucket, "k") == b"data"
            assert proxy.requests == (
                [("PUT", key_path, "slow_down")] * 2 + [("PUT", key_path, 200)]) * 2 + (
                [("GET", key_path, "slow_down")] * 2 + [("GET", key_path, 200)])


def test_only_faults_the_requests_it_accepts(upstream, bucket, no_backoff):
    plan = FaultPlan(seed=3, reset=0.9, only=path_contains("/shards/"))
    with FaultProxy(upstream, plan) as proxy:
        client = s3_client(proxy.url)
        for i in range(4):
            client.put_object(Bucket=bucket, Key=f"out/shards/{i}.tar", Body=SMALL[0])
            client.put_object(Bucket=bucket, Key=f"out/meta/{i}.json", Body=SMALL[1])
        faulted = {path for _, path, outcome in proxy.requests if not isinstance(outcome, int)}
        assert faulted and all("/shards/" in path for path in faulted)
    assert only_uploads("PUT", "/b/k", "") and not only_uploads("GET", "/b/k", "")


def _run_sequence(upstream, bucket, seed):
    plan = FaultPlan(seed=seed, slow_down=0.2, reset=0.2, reset_mid_upload=0.2, delay=0.2,
                     delay_seconds=0.01)
    with FaultProxy(upstream, plan) as proxy:
        client = s3_client(proxy.url)
        for i in range(5):
            client.put_object(Bucket=bucket, Key=f"k/{i}", Body=SMALL[i % 3])
        for i in range(5):
            assert read(client, bucket, f"k/{i}") == SMALL[i % 3]
        client.list_objects_v2(Bucket=bucket)
        sequential = proxy.requests
        client.upload_fileobj(io.BytesIO(BIG), bucket, "big", Config=MULTIPART)
        return sequential, collections.Counter(proxy.requests), proxy.faults


def test_the_same_seed_gives_the_same_faults(upstream, bucket, no_backoff):
    """Also for the parts of a multipart upload, which boto3 sends from several threads in an
    order of its own: their arrival order varies, but each part's faults do not."""
    first, again, other = (_run_sequence(upstream, bucket, seed) for seed in (11, 11, 12))
    assert first == again
    assert first[0] != other[0]
    assert sum(first[2][kind] for kind in FAILING_FAULTS) > 0


def test_a_held_put_waits_until_released(upstream, bucket):
    with FaultProxy(upstream) as proxy:
        hold = proxy.hold_when(lambda method, path, query: method == "PUT" and "/shards/" in path)
        client = s3_client(proxy.url)
        client.put_object(Bucket=bucket, Key="out/meta.json", Body=b"{}")  # does not match
        assert not hold.is_set()
        done = threading.Event()

        def upload():
            client.put_object(Bucket=bucket, Key="out/shards/0.tar", Body=BIG[:300_000])
            done.set()

        uploader = threading.Thread(target=upload, daemon=True)
        uploader.start()
        assert hold.wait(5)
        assert hold.request == ("PUT", f"/{bucket}/out/shards/0.tar", "")
        assert not done.wait(0.3)  # the client is stuck inside its request
        with pytest.raises(ClientError):  # and nothing reached the server
            s3_client(upstream).head_object(Bucket=bucket, Key="out/shards/0.tar")
        hold.release()
        assert done.wait(10)
        assert read(s3_client(upstream), bucket, "out/shards/0.tar") == BIG[:300_000]
        client.put_object(Bucket=bucket, Key="out/shards/1.tar", Body=b"x")  # only the first
        assert proxy.requests[-2:] == [("PUT", f"/{bucket}/out/shards/0.tar", 200),
                                       ("PUT", f"/{bucket}/out/shards/1.tar", 200)]


def test_stopping_drops_a_held_request_at_once(upstream, bucket):
    proxy = FaultProxy(upstream)
    hold = proxy.hold_when(lambda method, path, query: method == "PUT")
    client = s3_client(proxy.url, total_max_attempts=1)
    client.list_objects_v2(Bucket=bucket)  # leaves an idle keep-alive connection open too
    errors = []

    def upload():
        try:
            client.put_object(Bucket=bucket, Key="never", Body=b"y" * 10_000)
        except Exception as error:  # noqa: BLE001 - what it is, is the assertion below
            errors.append(error)

    uploader = threading.Thread(target=upload, daemon=True)
    uploader.start()
    assert hold.wait(5)
    started = time.monotonic()
    proxy.close()
    assert time.monotonic() - started < 2
    uploader.join(5)
    assert not uploader.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], ConnectionClosedError)
    assert proxy.requests[-1] == ("PUT", f"/{bucket}/never", "dropped")
    with pytest.raises(ClientError):
        s3_client(upstream).head_object(Bucket=bucket, Key="never")


@pytest.mark.parametrize("kind", ["reset", "reset_mid_upload"])
def test_a_reset_is_a_tcp_rst_not_a_clean_close(upstream, kind):
    """Clients report a RST ("connection reset by peer") differently from a FIN (an empty
    read), and retry them through different paths; the proxy must send the one it promises."""
    if kind == "reset":  # no body, so that the RST cannot land while the request is being sent
        method, request = "GET", b"GET /fp-raw/k HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    else:  # half the body: all the proxy reads before it resets
        method, request = "PUT", (b"PUT /fp-raw/k HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                  b"Content-Length: 100000\r\n\r\n" + b"z" * 50_000)
    with FaultProxy(upstream, FaultPlan(seed=0, **{kind: 1.0})) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
            sock.sendall(request)
            with pytest.raises(ConnectionResetError):
                while sock.recv(65536):
                    pass
        assert proxy.requests == [(method, "/fp-raw/k", kind)]


def test_a_plan_that_cannot_be_is_refused():
    with pytest.raises(ValueError):
        FaultPlan(seed=0, slow_down=0.6, reset=0.6)
    with pytest.raises(ValueError):
        FaultPlan(seed=0, delay=1.5)
