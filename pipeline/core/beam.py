"""Beam's options as openwit uses them: what is left of a command line after a command's own
flags is Beam's (runner, filesystem credentials and endpoints, Dataflow settings), checked
here so that a misspelt flag stops the command instead of being dropped with a warning; and
where the pipeline runs: a remote runner's needs are checked before a graph is built, and a
Dataflow dry run (`--dry_run True`) ends with the translated graph, the launcher having touched
no storage."""

from __future__ import annotations

import dataclasses
import importlib

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import (
    GoogleCloudOptions,
    PipelineOptions,
    StandardOptions,
    TestOptions,
)
from apache_beam.portability.api import beam_runner_api_pb2

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


# ------------------------------------------------------------------ where the pipeline runs

DATAFLOW = "DataflowRunner"
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no", ""}


def runner_name(options: PipelineOptions) -> str:
    """The runner's class name as Beam resolves it ('dataflow' -> 'DataflowRunner')."""
    runner = options.view_as(StandardOptions).runner or StandardOptions.DEFAULT_RUNNER
    if not isinstance(runner, str):
        return type(runner).__name__
    short = runner.rsplit(".", 1)[-1].lower()
    known = {name.lower(): name for name in StandardOptions.KNOWN_RUNNER_NAMES}
    return known.get(short, known.get(short + "runner", runner.rsplit(".", 1)[-1]))


def runs_on_this_machine(options: PipelineOptions) -> bool:
    """Beam's local runners: their workers share this machine's disk."""
    return runner_name(options) in StandardOptions.LOCAL_RUNNERS


def is_dry_run(options: PipelineOptions) -> bool:
    """`--dry_run True`: the DataflowRunner translates the graph and submits nothing, so the
    launcher must touch no storage either. Beam reads the flag as a string (`--dry_run False`
    would be a dry run to it): it is made a bool here, and refused for runners that would
    simply run the pipeline."""
    test_options = options.view_as(TestOptions)
    value = test_options.dry_run
    if isinstance(value, str):
        if value.strip().lower() not in _TRUE | _FALSE:
            raise ConfigError(f"--dry_run {value!r}: give True or False")
        value = value.strip().lower() in _TRUE
    test_options.dry_run = bool(value)
    if test_options.dry_run and runner_name(options) != DATAFLOW:
        raise ConfigError(f"--dry_run True translates the graph for --runner {DATAFLOW} and "
                          f"submits nothing; the {runner_name(options)} would run it: leave "
                          f"--dry_run out for a local run")
    return test_options.dry_run


def check_runner(options: PipelineOptions) -> None:
    """What a remote runner needs before a graph is built, as one line each: the DataflowRunner
    needs the gcp extra, a project, a region, and a gs:// temp or staging location (without
    one Beam tries to create a bucket and waits on it)."""
    if runner_name(options) != DATAFLOW:
        return
    try:
        importlib.import_module("apache_beam.runners.dataflow.internal.apiclient")
    except ImportError:
        raise ConfigError(f"--runner {DATAFLOW} needs the gcp extra: "
                          "pip install 'openwit[gcp]'") from None
    cloud = options.view_as(GoogleCloudOptions)
    missing = [flag for flag, value in (("--project", cloud.project), ("--region", cloud.region))
               if not value]
    if missing:
        raise ConfigError(f"--runner {DATAFLOW} needs {' and '.join(missing)}")
    if not any((location or "").startswith("gs://")
               for location in (cloud.temp_location, cloud.staging_location)):
        raise ConfigError(f"--runner {DATAFLOW} needs --temp_location gs://BUCKET/tmp (or "
                          "--staging_location gs://...)")


def check_paths_reach_workers(options: PipelineOptions, paths: dict[str, list[str]]) -> None:
    """On a remote runner the workers read inputs and write outputs themselves: a path on this
    machine's disk is not theirs. `paths`: flag -> the paths it gave."""
    if runs_on_this_machine(options):
        return
    for flag, values in paths.items():
        for path in values:
            if path and FileSystems.get_scheme(path) in (None, "file"):
                raise ConfigError(
                    f"{flag} {path!r} is a path on this machine; the {runner_name(options)}'s "
                    "workers cannot read or write it: use gs:// or s3://")


def check_launch(options: PipelineOptions, paths: dict[str, list[str]]) -> bool:
    """The checks every job makes before it builds a graph (the dry-run flag, `check_runner`,
    then the paths of `paths` for the runner's workers); True for a dry run."""
    dry_run = is_dry_run(options)
    check_runner(options)
    check_paths_reach_workers(options, paths)
    return dry_run


@dataclasses.dataclass(frozen=True)
class DryRun:
    """A pipeline translated and not run by this process: a dry run (the graph, and nothing
    else anywhere), or a Dataflow template (`--template_location`, as a Flex Template launch
    passes it), whose job Dataflow starts after this process ends, so the launcher's work
    after a job (the final fields of stats.json) cannot happen here."""

    runner: str
    graph: beam_runner_api_pb2.Pipeline | None
    template_location: str | None = None

    def step_names(self) -> list[str]:
        """Every transform's full name, composite and leaf."""
        if self.graph is None:
            return []
        return sorted(t.unique_name for t in self.graph.components.transforms.values())

    def stages(self) -> list[str]:
        """The pipeline's top-level steps, in the order they were applied."""
        if self.graph is None:
            return []
        transforms = self.graph.components.transforms
        level = list(self.graph.root_transform_ids)
        # One composite holding the whole job ("Build corpus") says little: look inside it.
        while len(level) == 1 and transforms[level[0]].subtransforms:
            level = list(transforms[level[0]].subtransforms)
        return [transforms[t].unique_name.rsplit("/", 1)[-1] for t in level]

    def summary(self) -> str:
        if self.template_location:
            return (f"the {self.runner} wrote the job to {self.template_location}; Dataflow "
                    "starts it from there (stats.json keeps the job's own counts: the "
                    "launcher's wall time and input versions are not added)")
        return (f"dry run: the {self.runner} translated the graph ({len(self.step_names())} "
                f"steps: {', '.join(self.stages())}); nothing was submitted and no storage was "
                "touched")


def run_pipeline(pipeline: beam.Pipeline) -> DryRun | None:
    """Runs the pipeline to the end; in a dry run, or when it is written as a template, only
    translates it (the caller then skips what it does after a job)."""
    result = pipeline.run()
    if is_dry_run(pipeline.options):
        return DryRun(runner_name(pipeline.options), result.job.proto_pipeline)
    template = pipeline.options.view_as(GoogleCloudOptions).template_location
    if template:
        job = getattr(result, "job", None)
        return DryRun(runner_name(pipeline.options), getattr(job, "proto_pipeline", None),
                      template_location=template)
    result.wait_until_finish()
    return None
