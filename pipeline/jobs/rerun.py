"""A job run again over an output it already finished ends at once, without starting Beam.

Every shard a run completes is kept by the next one, but the text stages run again and Beam's
start-up is paid again. When `stats.json` says the output was finished by a job with the same
settings over the same inputs (paths, sizes and versions: an S3 ETag, else the modification
time) and every shard it names is there, the job returns that stats.json instead. Anything
else (another setting, a changed or added input, a missing shard, an unfinished run) runs the
job, which still reuses the completed shards.
"""

from __future__ import annotations

import json
import logging

from openwit.pipeline.core import layout, storage

LOGGER = logging.getLogger("openwit")

INPUTS_FIELD = "inputs"  # stats.json: what the finished job read, as `input_versions` says


def input_versions(patterns: list[str], folders_or_files: list[str] = ()) -> list[dict]:
    """Every file the patterns match, and every file under `folders_or_files` (or the file
    itself), with size and version."""
    versions = []
    for pattern in patterns:
        versions.extend(_versions(pattern, storage.glob_info(pattern)))
    for path in folders_or_files:
        versions.extend(_versions(path, storage.glob_info(storage.join(path, "**"))
                                  or storage.glob_info(path)))
    return versions


def _versions(pattern: str, infos) -> list[dict]:
    return [{"pattern": pattern, "path": info.path, "size": info.size, "version": info.version}
            for info in infos]


def stats_of_same_run(output: str, run_config: dict, inputs: list[dict]) -> dict | None:
    """`output`'s stats.json if a run with these settings over these inputs wrote it."""
    try:
        stats = storage.read_json(storage.join(output, layout.STATS_FILE))
    # No stats.json yet (each filesystem says so its own way), or one that cannot be read:
    # either way the job runs, and rewrites it.
    except (OSError, ValueError):
        return None
    if stats.get(INPUTS_FIELD) != inputs or _canonical(stats.get("config")) != _canonical(
            run_config):
        return None
    return stats


def finished_stats(output: str, run_config: dict, inputs: list[dict]) -> dict | None:
    """The stats of a finished run of this job over `output`, or None if it must run."""
    stats = stats_of_same_run(output, run_config, inputs)
    if stats is None:
        return None
    shards = stats.get("shards") or {}
    names = {path.rsplit("/", 1)[-1]
             for path in storage.glob(storage.join(output, layout.SHARDS_FOLDER, "*"))}
    planned = shards.get("planned", 0)
    markers = all(f"{layout.shard_name(i)}{layout.SHARD_STATS_SUFFIX}" in names
                  for i in range(planned))
    tars = sum(1 for name in names if name.endswith(".tar"))
    if not markers or tars != shards.get("with_samples") or layout.SIZES_FILE not in names:
        LOGGER.info("stats.json says this job finished, but shards are missing: running it")
        return None
    LOGGER.info("%s already holds this job's finished output (same settings, same inputs); "
                "nothing to do", output)
    return stats


def _canonical(value) -> str:
    """JSON text with sorted keys: tuples and lists, as a config round-trips stats.json."""
    return json.dumps(value, sort_keys=True, default=str)
