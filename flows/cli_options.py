"""The command line's shared options: how images are scored and where the pipeline runs, built in one place.

Every command that scores takes the same ``--model/--device/--precision/...`` flags from :func:`scoring_parent`,
every command that runs the pipeline the same ``--runner/--beam-option/...`` from :func:`pipeline_parent`, and
:func:`scoring_settings` / :func:`pipeline_settings` turn them into the one validated object each layer holds.
"""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Sequence

from pipelines.settings import LOCAL_RUNNER, PipelineSettings, read_options_file
from pipelines.times import parse_event_time
from scoring import DECODERS, DEFAULT_MODEL, PRECISIONS, GradwatchError, ScoringSettings
from scoring.settings import BACKENDS


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def model_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model spec (default: %(default)s)")


def scoring_parent(parents: Sequence[argparse.ArgumentParser] = ()) -> argparse.ArgumentParser:
    """``--model --device --precision --decoder --scaled-jpeg-decode --batch-size --temperature --compile``, after
    ``parents``' options."""
    parent = argparse.ArgumentParser(add_help=False, parents=list(parents))
    group = parent.add_argument_group("scoring (thresholds hold for the precision, decoder, scaled JPEG decoding and "
                                      "temperature they were calibrated with)")  # fmt: skip
    model_option(group)
    group.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: %(default)s)")
    group.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="fp16/bf16: autocast on GPU tensor cores; fp16 keeps scores within 5e-3 (default: %(default)s)",
    )
    group.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="what runs the network; auto: onnxruntime on a CPU in fp32 where installed (about 2x torch), torch "
        "otherwise; scores agree within 1e-5 (default: %(default)s)",
    )
    group.add_argument(
        "--decoder",
        choices=DECODERS,
        default="host",
        help="device: decode JPEGs on the GPU with torchvision, host threads for the rest; nvJPEG moves scores a "
        "little (default: %(default)s)",
    )
    group.add_argument(
        "--scaled-jpeg-decode",
        action=argparse.BooleanOptionalAction,
        default=ScoringSettings.scaled_jpeg_decode,
        help="host: decode JPEGs at least twice the resize target at libjpeg's 1/2, 1/4 or 1/8 scale, about 2x "
        "end to end on 1080p frames; moves scores past fp16's 5e-3 (default: %(default)s)",
    )
    group.add_argument("--batch-size", type=positive_int, default=None, help="largest batch (default: by device)")
    group.add_argument("--temperature", type=float, default=1.0, help="T of GradNorm and Energy (default: 1)")
    group.add_argument("--compile", action="store_true", help="torch.compile the model (GPU, long runs)")
    return parent


def pipeline_parent() -> argparse.ArgumentParser:
    """``--runner --beam-option --beam-options-file --workers --large-model``."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("pipeline")
    group.add_argument(
        "--runner", default=LOCAL_RUNNER, help="local (FnApiRunner), or a Beam runner: FlinkRunner, DataflowRunner..."
    )
    group.add_argument(
        "--beam-option", action="append", default=[], metavar="KEY=VALUE", help="pipeline option, repeatable"
    )
    group.add_argument(
        "--beam-options-file", metavar="FILE", help="KEY=VALUE lines, e.g. infra/beam-presets/flink.options"
    )
    group.add_argument("--workers", type=positive_int, default=1, help="local worker processes (default: 1)")
    group.add_argument("--large-model", action="store_true", help="one model per machine shared by processes")
    return parent


def scoring_settings(args: argparse.Namespace) -> ScoringSettings:
    """The scoring flags as settings.

    Raises:
        GradwatchError: a value the settings refuse, with their message.
    """
    try:
        return ScoringSettings(
            model=args.model,
            device=args.device,
            precision=args.precision,
            backend=args.backend,
            decoder=args.decoder,
            scaled_jpeg_decode=args.scaled_jpeg_decode,
            batch_size=args.batch_size,
            temperature=args.temperature,
            compile=args.compile,
        )
    except ValueError as error:
        raise GradwatchError(str(error)) from error


def pipeline_settings(args: argparse.Namespace) -> PipelineSettings:
    """The pipeline flags as settings; options from ``--beam-options-file`` come before ``--beam-option`` ones.

    Raises:
        GradwatchError: a value the settings refuse, with their message.
    """
    from_file = read_options_file(args.beam_options_file) if args.beam_options_file else ()
    try:
        return PipelineSettings(
            runner=args.runner,
            beam_options=(*from_file, *args.beam_option),
            workers=args.workers,
            large_model=args.large_model,
        )
    except ValueError as error:
        raise GradwatchError(str(error)) from error


def time_range(since: str | None, until: str | None) -> tuple[dt.datetime | None, dt.datetime | None]:
    """``--since`` and ``--until`` read as times, each error naming its flag.

    Raises:
        GradwatchError: a value that is not a time, or a range that holds no time (it would process nothing and
            exit 0, which reads as success).
    """
    parsed: list[dt.datetime | None] = []
    for flag, text in (("--since", since), ("--until", until)):
        try:
            parsed.append(parse_event_time(text) if text else None)
        except ValueError:
            raise GradwatchError(
                f"{flag} {text!r} is not a time: give ISO-8601 (2026-11-26, 2026-11-26T13:00Z; a time without a "
                "zone is UTC) or epoch seconds"
            ) from None
    start, end = parsed
    if start is not None and end is not None and start >= end:
        raise GradwatchError(
            f"--since {start.isoformat()} is not before --until {end.isoformat()}: the range holds nothing; "
            "swap them or widen it"
        )
    return start, end
