"""Writes constraints.txt: the exact versions, in the environment this runs in, of every
distribution that `pip install 'openwit[gcp,aws]'` needs (openwit's own requirements, their
requirements, and so on, with the extras each asks for), and nothing the `dev` extra adds.

    .venv/bin/python infra/dataflow/pin_constraints.py > infra/dataflow/constraints.txt

Run it in the virtual environment the test suite passes in (`make test`), so that the
container installs what CI tested; tests/test_infra_dataflow.py fails when a pin and the test
environment disagree, or when openwit gains a requirement the file does not pin.
"""

from __future__ import annotations

import importlib.metadata as metadata
import sys

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = "openwit"
EXTRAS = frozenset({"gcp", "aws"})

HEADER = """\
# The worker image's Python dependencies, pinned: every distribution that
# `pip install 'openwit[gcp,aws]'` needs, at the version the test suite passed with
# (Python 3.11, Beam 2.77). No test-only package (pytest, moto, ...) is listed.
#
# Regenerate after any change to pyproject.toml's dependencies, from the venv `make test`
# built and passed in:
#     .venv/bin/python infra/dataflow/pin_constraints.py > infra/dataflow/constraints.txt
# tests/test_infra_dataflow.py checks that these pins equal the test venv's versions.
#
# torch is pinned by its public version: the image installs the CPU build (2.13.0+cpu)
# first, from PyTorch's CPU index, and this pin keeps pip from replacing it.
"""


def requirement_closure(root: str = ROOT, extras: frozenset[str] = EXTRAS) -> dict[str, str]:
    """Canonical name -> installed version, for everything `root[extras]` needs here."""
    wanted: dict[str, frozenset[str]] = {}
    stack = [(root, frozenset(extras))]
    while stack:
        name, asked = stack.pop()
        key = canonicalize_name(name)
        known = wanted.get(key)
        if known is not None and asked <= known:
            continue
        wanted[key] = (known or frozenset()) | asked
        environments = [{"extra": extra} for extra in {"", *wanted[key]}]
        for line in metadata.distribution(name).requires or ():
            requirement = Requirement(line)
            marker = requirement.marker
            if marker is None or any(marker.evaluate(env) for env in environments):
                stack.append((requirement.name, frozenset(requirement.extras)))
    wanted.pop(canonicalize_name(root))
    return {key: public_version(metadata.version(key)) for key in sorted(wanted)}


def public_version(version: str) -> str:
    """2.13.0+cpu -> 2.13.0: a pin without the local label accepts any build of it."""
    return Version(version).public


def render(pins: dict[str, str]) -> str:
    return HEADER + "".join(f"{name}=={version}\n" for name, version in pins.items())


def main() -> int:
    sys.stdout.write(render(requirement_closure()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
