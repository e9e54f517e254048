"""What must never leave memory: credentials and endpoints for object storage arrive as Beam
filesystem flags (--s3_secret_access_key, --s3_session_token, ...) and travel inside configs
only so that DataLoader workers can open remote shards. Every file openwit writes from a
config (checkpoints, run.json, eval.json, stats.json) goes through `without_secrets`."""

from __future__ import annotations

import dataclasses

# Config fields that hold Beam filesystem flags, credentials among them.
SECRET_FIELDS = ("filesystem_flags",)


def without_secrets(config) -> dict:
    """A dataclass (or a dict) as a plain dict, every secret field left out, at any depth."""
    value = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config
    return _strip(value)


def _strip(value):
    if isinstance(value, dict):
        return {key: _strip(item) for key, item in value.items() if key not in SECRET_FIELDS}
    if isinstance(value, (list, tuple)):
        return type(value)(_strip(item) for item in value)
    return value
