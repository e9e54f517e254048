"""Beam's options as openwit uses them: what is left of a command line after a command's own
flags is Beam's (runner, filesystem credentials and endpoints, Dataflow settings), checked
here so that a misspelt flag stops the command instead of being dropped with a warning."""

from __future__ import annotations

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from openwit.pipeline.core.errors import ConfigError


def reject_unknown_options(options: PipelineOptions, args: list[str] = ()) -> None:
    """Beam only warns about flags nobody defines; a misspelt flag must stop the command.
    `args`: the command line the options came from, to name a flag as the user spelt it."""
    known = PipelineOptions([]).get_all_options(display_warnings=False)
    given = options.get_all_options(display_warnings=False, retain_unknown_options=True)
    unknown = sorted(set(given) - set(known))
    if unknown:
        spelt = {}
        for arg in args:
            flag = arg.split("=", 1)[0]
            if flag.startswith("-"):
                spelt.setdefault(flag.lstrip("-").replace("-", "_"), flag)
        raise ConfigError("unknown option(s): " + ", ".join(
            spelt.get(name, f"--{name}") for name in unknown))


def beam_options(beam_args: list[str]) -> PipelineOptions:
    """The Beam options among a command's arguments, checked, and handed to FileSystems (s3://
    and gs:// take credentials and endpoints from them, at launch as on the workers)."""
    stray = [arg for arg in beam_args if not arg.startswith("-")]
    if stray and not any(arg.startswith("--") for arg in beam_args):
        raise ConfigError("unexpected argument(s): " + " ".join(stray))
    options = PipelineOptions(list(beam_args))
    reject_unknown_options(options, beam_args)
    FileSystems.set_options(options)
    return options


def with_local_runner(options: PipelineOptions) -> PipelineOptions:
    """Beam's default runner first tries to download Prism; run locally unless told otherwise.

    The DirectRunner runs in memory unless --direct_running_mode says otherwise.
    """
    standard = options.view_as(StandardOptions)
    if standard.runner is None:
        standard.runner = "DirectRunner"
    return options
