"""How the scoring pipeline runs: the runner, its pass-through options and the local worker processes."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipelines.redaction import redact
from scoring import GradwatchError

if TYPE_CHECKING:
    from apache_beam.options.pipeline_options import PipelineOptions

# Beam's embedded FnApiRunner, in this process: it works offline, where DirectRunner first tries to download Prism.
LOCAL_RUNNER = "local"
# Beam options that carry credentials (s3_secret_access_key, s3_session_token, azure_connection_string, gbek...).
_CREDENTIAL_OPTION = re.compile(r"secret|token|passw|credential|connection_string|access_key|api_key|gbek", re.I)


class RunnerError(GradwatchError):
    """Beam has no runner of the name given; the message lists those it has."""


@dataclass(frozen=True)
class PipelineSettings:
    """Where and how the pipeline runs. Defaults start fastest on one machine."""

    # "local" is the embedded FnApiRunner; any Beam runner name (FlinkRunner, DataflowRunner...) takes the same code.
    runner: str = LOCAL_RUNNER
    # KEY=VALUE pipeline options passed through to Beam, e.g. flink_master=host:8081.
    beam_options: tuple[str, ...] = ()
    # Local worker processes; 1 runs everything in this process, which starts fastest.
    workers: int = 1
    # Share one model per machine between worker processes (one GPU, one copy); always so for several local
    # processes on a GPU, where a copy each would split its memory and contend for it.
    large_model: bool = False

    def __post_init__(self) -> None:
        if not self.runner or not self.runner.strip():
            raise ValueError("runner must be 'local' or the name of a Beam runner, e.g. FlinkRunner")
        for option in self.beam_options:
            key, separator, _ = option.partition("=")
            if not separator or not key.strip("-"):
                raise ValueError(f"--beam-option {option!r} must be KEY=VALUE, e.g. flink_master=localhost:8081")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")

    @property
    def is_local(self) -> bool:
        return self.runner == LOCAL_RUNNER

    def check(self) -> None:
        """Fail before any pipeline starts, not in the middle of a run, when Beam does not know the runner.

        Raises:
            RunnerError: naming the runner and what Beam has instead.
        """
        if self.is_local:
            return
        from apache_beam.runners.runner import create_runner

        try:
            create_runner(self.runner)
        except (ValueError, ImportError) as error:
            raise RunnerError(
                f"--runner {self.runner!r} is not a Beam runner here ({error}); use 'local', a runner Beam names "
                "(FlinkRunner, DataflowRunner, PortableRunner...) or a runner class's full module path"
            ) from error

    def options(self) -> PipelineOptions:
        """The Beam pipeline options these settings make."""
        # Beam takes seconds to import: the command line builds these settings long before a pipeline runs, if ever.
        from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, SetupOptions, StandardOptions

        options = PipelineOptions([f"--{option.lstrip('-')}" for option in self.beam_options])
        if self.is_local:
            direct = options.view_as(DirectOptions)
            direct.direct_num_workers = self.workers
            direct.direct_running_mode = "multi_processing" if self.workers > 1 else "in_memory"
        else:
            options.view_as(StandardOptions).runner = self.runner
        # Workers import gradwatch from the installed package, not from a pickled __main__.
        options.view_as(SetupOptions).save_main_session = False
        return options

    def cpu_threads(self) -> int | None:
        """torch threads per local worker process, so several do not oversubscribe the cores; None elsewhere."""
        return max(1, (os.cpu_count() or 1) // self.workers) if self.is_local else None

    def credential_options(self) -> list[str]:
        """The keys of the Beam options given that carry credentials."""
        keys = [option.partition("=")[0].lstrip("-") for option in self.beam_options]
        return [key for key in keys if _CREDENTIAL_OPTION.search(key)]

    def described(self) -> dict[str, str]:
        """For run parameters and logs: the runner and its options, credentials masked and removed from URLs."""
        shown = []
        for option in self.beam_options:
            key = option.partition("=")[0]
            shown.append(f"{key}=***" if _CREDENTIAL_OPTION.search(key) else redact(option))
        return {"runner": self.runner, "beam_options": " ".join(shown)}


def read_options_file(path: str | os.PathLike) -> tuple[str, ...]:
    """KEY=VALUE pipeline options, one per line; blank lines and ``#`` comments are skipped."""
    with open(path) as file:
        lines = [line.strip() for line in file]
    return tuple(line for line in lines if line and not line.startswith("#"))
