"""AWS credentials for boto3 on Dataflow workers, without putting them in the job's options.

boto3 runs this as a `credential_process` (the image's AWS config file names it). It prints
the JSON that process contract asks for (Version 1, AccessKeyId, SecretAccessKey, and
SessionToken and Expiration when there are any) and gets the credentials one of two ways:

Secret Manager (the default): the secret named by OPENWIT_AWS_SECRET (default
`openwit-aws-credentials`; a short name in the worker's project, or a full
`projects/P/secrets/S[/versions/V]` name) holds JSON such as
    {"AccessKeyId": "...", "SecretAccessKey": "...", "SessionToken": "..."}
(SessionToken and Expiration optional). It is read with the worker's service account
(Application Default Credentials: on a Dataflow worker, the metadata server), which needs
roles/secretmanager.secretAccessor on that secret and nothing else.

Web identity (no AWS key stored anywhere): with OPENWIT_AWS_ROLE_ARN set, the worker asks the
metadata server for a Google-signed ID token for its service account (audience
OPENWIT_AWS_AUDIENCE, default `openwit-aws`) and trades it with AWS STS
(AssumeRoleWithWebIdentity) for temporary credentials of that role. The role's trust policy
names the service account (infra/dataflow/README.md shows one).

Long-lived keys from the secret are reported with an Expiration OPENWIT_AWS_REFRESH_SECONDS
(default 3600, at least 1800) ahead, so a long-running worker asks again and picks up a
rotated secret.

Whatever fails, the message names the secret, the step and the HTTP status; it never contains
a credential, the secret's payload, or a token.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import sys
from typing import Any, Callable

DEFAULT_SECRET = "openwit-aws-credentials"
DEFAULT_AUDIENCE = "openwit-aws"
DEFAULT_REFRESH_SECONDS = 3600
# botocore refreshes credentials within 15 minutes of their expiry; an earlier expiry would
# start this process on nearly every request.
MIN_REFRESH_SECONDS = 1800
SECRET_MANAGER = "https://secretmanager.googleapis.com/v1"
SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
PROGRAM = "aws_credentials_from_secret"


class CredentialError(Exception):
    """A failure to report as one line on stderr (boto3 shows it as the error)."""


# ------------------------------------------------------------------------- Secret Manager


def secret_version_name(secret: str, project: str | None) -> str:
    """`name`, `projects/P/secrets/S` or `projects/P/secrets/S/versions/V` -> a version name."""
    secret = secret.strip().strip("/")
    if not secret:
        raise CredentialError("OPENWIT_AWS_SECRET is empty: name the Secret Manager secret")
    parts = secret.split("/")
    if parts[0] == "projects":
        if len(parts) == 4 and parts[2] == "secrets":
            return f"{secret}/versions/latest"
        if len(parts) == 6 and parts[2] == "secrets" and parts[4] == "versions":
            return secret
        raise CredentialError(f"OPENWIT_AWS_SECRET={secret!r}: give a secret name or "
                              "projects/PROJECT/secrets/NAME[/versions/VERSION]")
    if len(parts) != 1:
        raise CredentialError(f"OPENWIT_AWS_SECRET={secret!r}: give a secret name or "
                              "projects/PROJECT/secrets/NAME[/versions/VERSION]")
    if not project:
        raise CredentialError(f"secret {secret!r}: no Google Cloud project to look it up in "
                              "(set OPENWIT_AWS_SECRET_PROJECT or give the full "
                              "projects/... name)")
    return f"projects/{project}/secrets/{secret}/versions/latest"


def read_secret(version: str, session) -> bytes:
    """The payload of a secret version. `session`: an authorized HTTP session with `get`
    (google-auth's AuthorizedSession, or a test's fake)."""
    try:
        response = session.get(f"{SECRET_MANAGER}/{version}:access", timeout=30)
    except Exception as error:  # noqa: BLE001 - reported by type only: the text may quote a URL with a token
        raise CredentialError(f"reading {version}: {type(error).__name__} talking to "
                              "Secret Manager") from None
    status = getattr(response, "status_code", None)
    if status != 200:
        raise CredentialError(f"reading {version}: HTTP {status} ({api_error(response)}); "
                              "the worker's service account needs "
                              "roles/secretmanager.secretAccessor on this secret")
    try:
        data = response.json()["payload"]["data"]
        return base64.b64decode(data, validate=True)
    except Exception:  # noqa: BLE001 - the body is the secret: never quoted
        raise CredentialError(f"reading {version}: Secret Manager's answer has no payload "
                              "in the expected form") from None


def api_error(response) -> str:
    """Google's error status (NOT_FOUND, PERMISSION_DENIED, ...), without the body's text."""
    try:
        error = response.json().get("error", {})
        return str(error.get("status") or "no error status")
    except Exception:  # noqa: BLE001
        return "no error status"


def credentials_from_payload(payload: bytes, version: str, now: dt.datetime,
                             refresh_seconds: int) -> dict[str, Any]:
    """The secret's JSON -> the credential_process answer."""
    try:
        stored = json.loads(payload.decode("utf-8"))
    except Exception:  # noqa: BLE001 - the decoder's message may quote the payload
        raise CredentialError(f"{version}: the payload is not JSON; store "
                              '{"AccessKeyId": ..., "SecretAccessKey": ...}') from None
    if not isinstance(stored, dict):
        raise CredentialError(f"{version}: the payload is JSON but not an object; store "
                              '{"AccessKeyId": ..., "SecretAccessKey": ...}')
    missing = [key for key in ("AccessKeyId", "SecretAccessKey")
               if not isinstance(stored.get(key), str) or not stored.get(key)]
    if missing:
        raise CredentialError(f"{version}: the payload lacks {' and '.join(missing)} "
                              "(a non-empty string each)")
    answer: dict[str, Any] = {"Version": 1, "AccessKeyId": stored["AccessKeyId"],
                              "SecretAccessKey": stored["SecretAccessKey"]}
    if stored.get("SessionToken"):
        answer["SessionToken"] = str(stored["SessionToken"])
    expiry = now + dt.timedelta(seconds=refresh_seconds)
    if stored.get("Expiration"):
        stored_expiry = parse_time(str(stored["Expiration"]), version)
        expiry = min(expiry, stored_expiry)
    answer["Expiration"] = format_time(expiry)
    return answer


# ------------------------------------------------------------------------- web identity


def web_identity_credentials(role_arn: str, audience: str, fetch_token: Callable[[str], str],
                             assume_role: Callable[..., dict], session_name: str
                             ) -> dict[str, Any]:
    """An ID token for the worker's service account -> temporary credentials of `role_arn`."""
    try:
        token = fetch_token(audience)
    except Exception as error:  # noqa: BLE001
        raise CredentialError(f"no Google ID token for audience {audience!r} "
                              f"({type(error).__name__}); on Dataflow the metadata server "
                              "issues it for the worker's service account") from None
    try:
        answer = assume_role(RoleArn=role_arn, RoleSessionName=session_name,
                             WebIdentityToken=token)
        issued = answer["Credentials"]
    except Exception as error:  # noqa: BLE001 - botocore's text can echo request fields
        response = getattr(error, "response", None)
        code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
        raise CredentialError(f"AssumeRoleWithWebIdentity for {role_arn}: "
                              f"{code or type(error).__name__}; check the role's trust policy "
                              "(Federated accounts.google.com, this service account's "
                              "unique id, audience)") from None
    expiration = issued["Expiration"]
    if isinstance(expiration, dt.datetime):
        expiration = format_time(expiration)
    return {"Version": 1, "AccessKeyId": issued["AccessKeyId"],
            "SecretAccessKey": issued["SecretAccessKey"],
            "SessionToken": issued["SessionToken"], "Expiration": str(expiration)}


def google_id_token(audience: str) -> str:
    """A Google-signed ID token for this machine's service account (metadata server)."""
    import google.auth.transport.requests
    import google.oauth2.id_token

    return google.oauth2.id_token.fetch_id_token(google.auth.transport.requests.Request(),
                                                 audience)


def sts_assume_role(**arguments) -> dict:
    """STS's AssumeRoleWithWebIdentity, unsigned (the token is the proof)."""
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    region = os.environ.get("OPENWIT_AWS_STS_REGION") or "us-east-1"
    sts = boto3.session.Session().client("sts", region_name=region,
                                         config=Config(signature_version=UNSIGNED))
    return sts.assume_role_with_web_identity(**arguments)


# ------------------------------------------------------------------------- time


def parse_time(text: str, where: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CredentialError(f"{where}: Expiration is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.astimezone(dt.timezone.utc)


def format_time(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------------------- entry point


def default_session():
    """An HTTP session authorized as the machine's Google identity, and its project."""
    import google.auth
    from google.auth.transport.requests import AuthorizedSession

    credentials, project = google.auth.default(scopes=list(SCOPES))
    return AuthorizedSession(credentials), project


def credentials(environ: dict[str, str], now: dt.datetime, session_factory=default_session,
                fetch_token=google_id_token, assume_role=sts_assume_role) -> dict[str, Any]:
    role_arn = environ.get("OPENWIT_AWS_ROLE_ARN", "").strip()
    if role_arn:
        audience = environ.get("OPENWIT_AWS_AUDIENCE", "").strip() or DEFAULT_AUDIENCE
        session_name = environ.get("OPENWIT_AWS_SESSION_NAME", "").strip() or "openwit-dataflow"
        return web_identity_credentials(role_arn, audience, fetch_token, assume_role,
                                        session_name)
    secret = environ.get("OPENWIT_AWS_SECRET", DEFAULT_SECRET)
    try:
        refresh = int(environ.get("OPENWIT_AWS_REFRESH_SECONDS", DEFAULT_REFRESH_SECONDS))
    except ValueError:
        raise CredentialError("OPENWIT_AWS_REFRESH_SECONDS: give a whole number of "
                              "seconds") from None
    project = environ.get("OPENWIT_AWS_SECRET_PROJECT", "").strip() or None
    # A name that cannot be right is reported before anything talks to Google.
    secret_version_name(secret, project or "any-project")
    try:
        session, default_project = session_factory()
    except Exception as error:  # noqa: BLE001
        raise CredentialError(f"no Google credentials to read the secret with "
                              f"({type(error).__name__})") from None
    version = secret_version_name(secret, project or default_project)
    return credentials_from_payload(read_secret(version, session), version, now,
                                    max(MIN_REFRESH_SECONDS, refresh))


def main(argv: list[str] | None = None, environ: dict[str, str] | None = None,
         now: dt.datetime | None = None, stdout=None, stderr=None, **sources) -> int:
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    if argv and any(arg in ("-h", "--help") for arg in argv):
        print(__doc__, file=stdout)
        return 0
    environ = dict(os.environ if environ is None else environ)
    now = now or dt.datetime.now(dt.timezone.utc)
    try:
        answer = credentials(environ, now, **sources)
    except CredentialError as error:
        print(f"{PROGRAM}: {error}", file=stderr)
        return 1
    stdout.write(json.dumps(answer))
    stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
