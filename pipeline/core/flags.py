"""What every command's flags share: the boolean flag type, and the flags that several
commands take (`--output`, `--seed`, `--per-query-cap`), defined once so that each command's parser adds its own
copy with its own help text.

Each command defines its flags beside the conversion to its config dataclass
(`add_*_flags(parser)` and `*_config(args)` in one module); the CLI parses a command line once,
with that command's parser, and hands what is left to Beam (`core/beam.py`).
"""

from __future__ import annotations

import argparse


def parse_flag(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {value!r}")


def add_output_flag(group, help: str, default: str | None = None,
                    required: bool = False) -> None:
    group.add_argument("--output", default=default, required=required, help=help)


def add_seed_flag(group, help: str = "seed for every random decision") -> None:
    group.add_argument("--seed", type=int, default=0, help=help)


def add_per_query_cap_flag(group, help: str) -> None:
    add_flag(group, "--per-query-cap", type=int, default=None, help=help)


def add_flag(group, name: str, **kwargs) -> None:
    """`--a-b`, and its Beam-style spelling `--a_b` as a hidden alias: both are accepted, the
    help and the error messages show the first."""
    action = group.add_argument(name, **kwargs)
    if "-" in name[2:]:
        alias = dict(kwargs, dest=action.dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        alias.pop("required", None)
        group.add_argument("--" + name[2:].replace("-", "_"), **alias)
