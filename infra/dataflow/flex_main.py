"""The Flex Template's Python entry point (FLEX_TEMPLATE_PYTHON_PY_FILE in the Dockerfile).

Dataflow's Python template launcher runs this file with every template parameter as
`--name=value`, followed by the job's own options (project, region, staging and temp
locations, the worker image, and the location the job description is written to). This file
turns that into one `openwit COMMAND ...` command line and hands it to openwit's CLI:

    --command=build --candidates=gs://a/*.parquet;gs://b/*.parquet --per_query_cap=20000 ...
      -> openwit build --candidates gs://a/*.parquet --candidates gs://b/*.parquet
                       --per_query_cap 20000 ... --runner DataflowRunner ...

- `command` picks the openwit command: candidates, curate, download, build or queries (the
  commands that are Beam pipelines; train, eval and the rest are not Dataflow jobs).
- Parameters that openwit repeats (`--candidates`, `--wat`, ...) take several values
  separated by `;` (not `,`: gcloud's --parameters splits on commas).
- A parameter given as an empty string counts as not given (a scheduler that always sends
  every field sends empty ones).
- `verbose=true` adds `-v`.
- Everything else passes through unchanged, for Beam (openwit stops at a name nobody knows).
- Without `--runner`, the runner is the DataflowRunner; without `--sdk_container_image`, the
  workers run the image this runs in (OPENWIT_SDK_CONTAINER_IMAGE, which build_container.sh
  records in it), so that the graph is built and run by the same code.
"""

from __future__ import annotations

import os
import re
import sys

COMMANDS = ("candidates", "curate", "download", "build", "queries")

# Template parameter -> the openwit flag it becomes, for flags that take several values.
# Repeated flags (argparse `append`) get one `--flag value` per value; `--exclude-images`
# takes its values after one flag (nargs="+").
REPEATED = {
    "candidates": "--candidates",
    "wat": "--wat",
    "warc": "--warc",
    "wikipedia_dump": "--wikipedia_dump",
    "pageviews": "--pageviews",
    "extra_queries": "--extra_queries",
    "stop_list": "--stop_list",
}
SPREAD = {"exclude_images": "--exclude-images"}
SEPARATOR = ";"

_SECRET_NAME = re.compile(r"secret|token|password|access_key", re.IGNORECASE)
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


class ParameterError(ValueError):
    """A template parameter that cannot become an openwit command line."""


def parse_pairs(argv: list[str]) -> list[tuple[str, str | None]]:
    """`--name=value`, `--name value` and bare `--flag` -> (name, value or None), in order."""
    pairs: list[tuple[str, str | None]] = []
    index = 0
    while index < len(argv):
        token = argv[index]
        if not token.startswith("--") or token == "--":
            raise ParameterError(f"unexpected argument {token!r}: parameters come as "
                                 "--name=value")
        name, equals, inline = token[2:].partition("=")
        value = inline if equals else None
        if not equals and index + 1 < len(argv) and not argv[index + 1].startswith("--"):
            index += 1
            value = argv[index]
        pairs.append((name, value))
        index += 1
    return pairs


def openwit_argv(argv: list[str], environ: dict[str, str] | None = None) -> list[str]:
    """The launcher's arguments -> `openwit COMMAND ...` arguments (without `openwit`)."""
    environ = os.environ if environ is None else environ
    command = None
    verbose = False
    own: list[str] = []
    beam: list[str] = []
    has_runner = has_image = False
    for name, value in parse_pairs(argv):
        key = name.replace("-", "_")
        if value == "":
            continue  # an empty parameter is one that was not given
        if key == "command":
            if value not in COMMANDS:
                raise ParameterError(f"command={value!r}: give one of {', '.join(COMMANDS)}")
            if command is not None and command != value:
                raise ParameterError(f"command given twice ({command}, {value})")
            command = value
        elif key == "verbose":
            verbose = _boolean(key, value)
        elif key in REPEATED:
            for item in _values(key, value):
                own += [REPEATED[key], item]
        elif key in SPREAD:
            own += [SPREAD[key], *_values(key, value)]
        else:
            has_runner = has_runner or key == "runner"
            has_image = has_image or key in ("sdk_container_image",
                                             "worker_harness_container_image")
            beam.append(f"--{name}" if value is None else f"--{name}={value}")
    if command is None:
        raise ParameterError(f"no command parameter: give command= one of {', '.join(COMMANDS)}")
    if command == "build" and any(flag in own for flag in ("--wat", "--warc")):
        # `openwit build --wat` runs two pipelines (the crawl extraction, then the build); a
        # Flex launch submits exactly one job.
        raise ParameterError("build with wat/warc runs two pipelines, and a Flex Template "
                             "launch submits one job: run command=candidates first, then "
                             "command=build with candidates=<its output>/candidates-*.parquet")
    if not has_image and environ.get("OPENWIT_SDK_CONTAINER_IMAGE"):
        beam.insert(0, f"--sdk_container_image={environ['OPENWIT_SDK_CONTAINER_IMAGE']}")
    if not has_runner:
        beam.insert(0, "--runner=DataflowRunner")
    return (["-v"] if verbose else []) + [command] + own + beam


def redacted(argv: list[str]) -> list[str]:
    """The command line with the values of secret-looking options replaced, for logs."""
    shown = []
    hide_next = False
    for token in argv:
        if hide_next and not token.startswith("--"):
            shown.append("***")
            hide_next = False
            continue
        hide_next = False
        name, equals, _ = token.partition("=")
        if token.startswith("--") and _SECRET_NAME.search(name):
            if equals:
                shown.append(f"{name}=***")
            else:
                shown.append(token)
                hide_next = True
        else:
            shown.append(token)
    return shown


def _values(key: str, value: str | None) -> list[str]:
    items = [item.strip() for item in (value or "").split(SEPARATOR) if item.strip()]
    if not items:
        raise ParameterError(f"{key}: give at least one path")
    return items


def _boolean(key: str, value: str | None) -> bool:
    text = "true" if value is None else value.strip().lower()
    if text not in _TRUE | _FALSE:
        raise ParameterError(f"{key}={value!r}: give true or false")
    return text in _TRUE


def main(argv: list[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    try:
        command_line = openwit_argv(raw)
    except ParameterError as err:
        print(f"openwit flex template: error: {err}", file=sys.stderr)
        return 2
    # On the launcher VM's console log (gs://STAGING/.../template_launches/JOB/console_logs).
    print("openwit flex template: running: openwit " + " ".join(redacted(command_line)),
          file=sys.stderr, flush=True)
    from openwit.pipeline.apps.cli import main as openwit_main

    return openwit_main(command_line) or 0


if __name__ == "__main__":
    sys.exit(main())
