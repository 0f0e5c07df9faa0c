"""The ``gradwatch`` command line."""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import datetime as dt
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from flows.cli_options import (
    model_option,
    pipeline_parent,
    pipeline_settings,
    positive_int,
    scoring_parent,
    scoring_settings,
    time_range,
)
from scoring.errors import GradwatchError, ImageDecodeError

if TYPE_CHECKING:
    from flows.monitor import WindowOutcome
    from flows.registry import ThresholdRegistry
    from pipelines.pipeline import RunSummary, ScoringConfig
    from scoring import Scorer

TABLE_SCORES = ("gradnorm", "energy", "msp")


@dataclass(frozen=True)
class ImageRow:
    """One listed file: its scores, or why it was rejected."""

    file: str
    pred: int | None = None
    scores: dict[str, float] | None = None
    rejected: str | None = None


def score_folder(scorer: Scorer, folder: Path, batch_size: int) -> Iterator[list[ImageRow]]:
    """Score every file under ``folder`` in batches; files that do not decode come back rejected.

    Yields:
        One list of rows per batch, in sorted path order, so a caller can show progress.
    """
    files = list_files(folder)
    for start in range(0, len(files), batch_size):
        batch = files[start : start + batch_size]
        outcomes = scorer.score_encoded([path.read_bytes() for path in batch], sources=[str(path) for path in batch])
        rows = []
        for path, outcome in zip(batch, outcomes, strict=True):
            name = str(path.relative_to(folder))
            if isinstance(outcome, ImageDecodeError):
                rows.append(ImageRow(name, rejected=outcome.reason))
            else:
                scores = {score: float(outcome[score]) for score in scorer.score_names}
                rows.append(ImageRow(name, pred=int(outcome["pred"]), scores=scores))
        yield rows


def list_files(folder: Path) -> list[Path]:
    """Every regular file under ``folder``, hidden ones excluded, in sorted order."""
    return sorted(
        path
        for path in folder.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def _score_images(args: argparse.Namespace) -> int:
    folder = Path(args.dir)
    if not folder.is_dir():
        raise GradwatchError(f"DIR {str(folder)!r} is not a folder; pass a folder of images")
    errors = Console(stderr=True, soft_wrap=True)
    settings = scoring_settings(args)
    from scoring import load_scorer

    scorer = load_scorer(settings)
    total = len(list_files(folder))
    rows: list[ImageRow] = []
    with Progress(
        TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=errors
    ) as progress:
        task = progress.add_task("scoring", total=total)
        for batch in score_folder(scorer, folder, settings.batch_size_on(scorer.device.type)):
            rows.extend(batch)
            progress.advance(task, len(batch))
    if args.format == "csv":
        _write_csv(rows, scorer.score_names)
    else:
        _print_table(rows, scorer.model_id)
    rejected = Counter(row.rejected for row in rows if row.rejected)
    reasons = ", ".join(f"{count} {reason}" for reason, count in sorted(rejected.items()))
    errors.print(
        f"{len(rows)} files: {len(rows) - rejected.total()} scored, {rejected.total()} rejected"
        + (f" ({reasons})" if reasons else "")
    )
    return 0


def _score(args: argparse.Namespace) -> int:
    # Beam takes seconds to import and logs import-time warnings: only commands that run a pipeline pay.
    from flows.scratch import owned_temp_dir
    from pipelines.pipeline import ScoringConfig
    from pipelines.times import parse_plausible, parse_window

    pipeline = pipeline_settings(args)
    since, until = time_range(args.since, args.until)
    # Workers tick off each image in a local folder, which only local workers share with this process.
    with owned_temp_dir("progress") if pipeline.is_local else contextlib.nullcontext() as progress_dir:
        try:
            config = ScoringConfig(
                source=args.source,
                out=args.out,
                window=parse_window(args.window),
                since=since,
                until=until,
                scoring=scoring_settings(args),
                pipeline=pipeline,
                progress_dir=str(progress_dir) if progress_dir else None,
                plausible=parse_plausible(args.earliest_event_time),
            )
        except ValueError as error:
            raise GradwatchError(str(error)) from error
        console = Console(stderr=True, highlight=False, soft_wrap=True)
        since, until = config.aligned_range()
        if (since, until) != (config.since, config.until):
            console.print(f"time range widened to whole windows: [{since or '-inf'}, {until or '+inf'})")
        console.print(f"scoring {config.source} on the {pipeline.runner} runner, {pipeline.workers} worker(s)")
        summary = _run_with_progress(config, console)
    rejected = ", ".join(f"{reason} {count}" for reason, count in sorted(summary.rejected.items()))
    console.print(f"model      {summary.model_id}")
    console.print(f"listed     {summary.listed}")
    console.print(f"scored     {summary.scored}")
    console.print(f"rejected   {summary.rejected.total()}" + (f"  ({rejected})" if rejected else ""))
    console.print(f"windows    {summary.windows}")
    console.print(f"throughput {summary.images_per_second:.1f} images/s ({summary.seconds:.1f} s)")
    verdict = "ok" if summary.reconciled else "MISMATCH: images were lost; please report this"
    totals = f"{summary.listed} listed = {summary.scored} scored + {summary.rejected.total()} rejected"
    console.print(f"reconciliation: {totals}: {verdict}")
    console.print(f"outputs in {config.out}/scores, {config.out}/windows, {config.out}/rejected")
    return 0 if summary.reconciled else 1


# rich redraws a live bar 10 times a second.
_PROGRESS_POLL_S = 0.1


def _run_with_progress(config: ScoringConfig, console: Console) -> RunSummary:
    """Run the pipeline in a thread while a live count of finished images shows (local runners)."""
    from pipelines.pipeline import count_progress, run_scoring

    with Progress(
        TextColumn("images"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("left"),
        TimeRemainingColumn(), console=console, transient=True,
    ) as progress:  # fmt: skip
        task = progress.add_task("scoring", total=None)
        with ThreadPoolExecutor(max_workers=2) as pool:
            running = pool.submit(run_scoring, config)
            # The total reads SOURCE once more, beside the pipeline rather than before it: 37 s of a 147 s start
            # over a manifest of a million rows (bench/scale.py), while the launcher mostly waits on workers.
            counting = pool.submit(_images_to_list, config) if config.progress_dir else None
            while not running.done():
                if counting is not None and counting.done() and counting.exception() is None:
                    progress.update(task, total=counting.result(), refresh=True)
                    counting = None
                if config.progress_dir:
                    progress.update(task, completed=count_progress(config.progress_dir))
                # As often as the bar redraws: a run of a few images in a warm process ends within half a second,
                # and polled at that, its bar never showed the total (CI's test_cli caught it).
                time.sleep(_PROGRESS_POLL_S)
            summary = running.result()
        progress.update(task, total=summary.listed, completed=summary.listed)
    return summary


def _images_to_list(config: ScoringConfig) -> int:
    """About the images the run will list, for the bar's total (the pipeline also counts those rejected for an
    implausible time)."""
    from pipelines.sources import open_source

    return open_source(config.source).count_listed(*config.aligned_range())


def _calibrate(args: argparse.Namespace) -> int:
    from flows.calibrate import calibrate_from_out, calibrate_reference
    from flows.registry import ThresholdRegistry
    from flows.review import false_alarm_lines, lead_line, separation_lines, status_lines, threshold_rows
    from pipelines.redaction import redact
    from scoring.calibration import CalibrationConfig

    period = _calibration_period(args)
    try:
        config = CalibrationConfig(tpr=args.tpr, alpha=args.alpha, min_window=args.min_window)
    except ValueError as error:
        raise GradwatchError(str(error)) from error
    registry = ThresholdRegistry()
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    if period is not None:
        with console.status(f"calibrating on the windows of {redact(args.from_out)}"):
            version, calibration = calibrate_from_out(
                args.from_out, since=period[0], until=period[1], registry=registry, scoring=scoring_settings(args),
                score=args.score, config=config, labels=args.labels,
            )  # fmt: skip
    else:
        with console.status(f"scoring {args.reference} and calibrating"):
            version, calibration = calibrate_reference(
                args.reference,
                registry=registry,
                scoring=scoring_settings(args),
                pipeline=pipeline_settings(args),
                score=args.score,
                config=config,
                validation_ood=args.validation_ood,
                work_dir=Path(args.out) if args.out else None,
                labels=args.labels,
            )
    print(f"proposed {version.name} version {version.version} (alias candidate, review_status proposed)")
    print(
        f"model {calibration.model_id}, {calibration.reference_images} reference images, MLflow {redact(registry.uri)}"
    )
    links = registry.review_links(version)
    print(f"run {version.run_id}: {links.run}")
    if links.start_ui:
        print(f"  (a local store: start the UI first with '{links.start_ui}')")
    for name, bound in threshold_rows(calibration):
        print(f"  {name:<16} {bound}")
    for line in false_alarm_lines(calibration):
        print(f"  false alarms on held-out healthy windows: {line}")
    for line in separation_lines(calibration) if calibration.separation else []:
        print(f"  {line}")
    print(f"  lead score: {lead_line(calibration)}" + (" (--score picks another)" if args.score is None else ""))
    for warning in calibration.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print("review the run's description, plots and metrics in the MLflow UI (the run page above), then:")
    for line in status_lines(registry.review_subject(version))[1:]:
        print(f"  {line}")
    return 0


def _calibration_period(args: argparse.Namespace) -> tuple[dt.datetime, dt.datetime] | None:
    """[--since, --until) of a calibration from OUT, or None for one from REFERENCE.

    Raises:
        GradwatchError: both or neither of REFERENCE and --from-out, a period missing or unreadable, or an option
            that scores images given with --from-out, which scores nothing.
    """
    if (args.reference is None) == (args.from_out is None):
        raise GradwatchError(
            "calibrate takes REFERENCE (healthy images, scored now) or --from-out OUT --since T --until T (windows "
            "already scored), exactly one of them"
        )
    if args.from_out is None:
        if args.since or args.until:
            raise GradwatchError("--since/--until choose windows of --from-out OUT; REFERENCE is taken whole")
        return None
    if args.validation_ood or args.out:
        raise GradwatchError(
            "--validation-ood and --out score images, and --from-out scores nothing; calibrate on a REFERENCE "
            "folder to validate against shifted sets, or drop them"
        )
    if not (args.since and args.until):
        raise GradwatchError(
            "--from-out needs --since and --until: the period of healthy production windows the reference is made "
            "of (e.g. --since 2026-11-20 --until 2026-11-27)"
        )
    return time_range(args.since, args.until)


def _thresholds(args: argparse.Namespace) -> int:
    from flows.registry import ThresholdRegistry, describe, registered_model_name, review_record
    from flows.review import review_text
    from scoring.models import model_name

    registry = ThresholdRegistry()
    name = registered_model_name(model_name(args.model))
    if args.action == "check":
        return _check_thresholds(args, registry, name)
    if args.action == "list":
        table = Table(title=name)
        for column in ("version", "status", "aliases", "model_id", "created", "by"):
            table.add_column(column)
        for version in registry.versions(name):
            by = version.tags.get("approved_by") or version.tags.get("rejected_by") or ""
            created = version.created.strftime("%Y-%m-%d %H:%M")
            table.add_row(version.version, version.status, ",".join(version.aliases), version.model_id, created, by)
        Console(width=None if sys.stdout.isatty() else 200).print(table)
        return 0
    if args.action == "show":
        result = registry.get(name, args.version)
        calibration, links = registry.calibration(result), registry.review_links(result)
        if args.json:
            print(json.dumps(review_record(result, calibration, links), indent=2))
        else:
            print(review_text(registry.review_subject(result), calibration, links))
        return 0
    if args.action == "approve":
        result = registry.approve(name, args.version, by=args.by, note=args.note)
    else:
        if not args.note:
            raise GradwatchError("reject needs --note saying why, so the next calibration can address it")
        result = registry.reject(name, args.version, by=args.by, note=args.note)
    print(json.dumps(describe(result), indent=2))
    return 0


# `thresholds check`'s exit status when the reference does not represent production: 2 is an error, this a verdict.
NOT_REPRESENTATIVE_EXIT = 3


def _check_thresholds(args: argparse.Namespace, registry: ThresholdRegistry, name: str) -> int:
    from flows.calibrate import iso_utc
    from flows.reference_check import DEFAULT_PERIOD, check_against, last_day
    from pipelines.redaction import redact
    from pipelines.store import OutputStore

    store = OutputStore(args.against)
    since, until = time_range(args.since, args.until)
    if until is None:
        latest = last_day(store)
        if latest is None:
            raise GradwatchError(f"{redact(args.against)} holds no scored windows; pass the OUT the monitor writes to")
        until = latest[1]
    since = since or until - DEFAULT_PERIOD
    version = registry.get(name, args.version)
    record = check_against(store, registry, version, since=since, until=until)
    verdict = "representative" if record.representative else "NOT representative"
    print(f"{name} v{version.version}: the reference is {verdict} of production")
    period = f"[{iso_utc(since)}, {iso_utc(until)})"
    print(f"  production: {record.images} healthy-looking images of {redact(args.against)} in {period}")
    for rate in record.page_rates:
        print(
            f"  pages {rate.rate:.1%} of windows of {rate.window_size} (95% CI {rate.ci_low:.1%}-{rate.ci_high:.1%}; "
            f"alpha {record.alpha:.1%}, not representative above {2 * record.alpha:.1%})"
        )
    shifts = {shift.name: shift for shift in record.values}
    print("  most off:")
    for off in record.most_off:
        shift = shifts[off]
        print(
            f"    {off:<14} KS {shift.ks_distance:.2f} (p {shift.ks_p:.2g}), median moved {shift.median_shift:+.2f} "
            f"IQR, {shift.outside:.0%} outside its bounds against {shift.expected_outside:.0%}"
        )
    if record.unchecked:
        print(f"  not checked (not scored alike in this period): {', '.join(record.unchecked)}")
    if record.fix:
        print(f"fix: {record.fix}")
    return 0 if record.representative else NOT_REPRESENTATIVE_EXIT


def _earliest_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--earliest-event-time",
        help="images stamped earlier are rejected as implausible, never placed in a window (default: 2000-01-01; "
        "lower it for an older archive)",
    )


def _monitor(args: argparse.Namespace) -> int:
    from flows.monitor import monitor_config, run_monitor
    from flows.registry import ThresholdRegistry
    from pipelines.redaction import redact

    since, until = time_range(args.since, args.until)
    try:
        config = monitor_config(
            args.source, args.out, window=args.window, since=since, until=until, webhooks=args.webhook,
            slack_webhooks=args.slack_webhook, reprocess=args.reprocess, scoring=scoring_settings(args),
            pipeline=pipeline_settings(args), earliest_event_time=args.earliest_event_time,
        )  # fmt: skip
    except ValueError as error:
        raise GradwatchError(str(error)) from error
    # Each window's line as it is decided, and a bar with the time left on stderr: a day of windows takes minutes.
    progress = Progress(
        TextColumn("windows"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("left"),
        TimeRemainingColumn(), console=Console(stderr=True), transient=True, redirect_stdout=False,
    )  # fmt: skip
    task = progress.add_task("windows", total=None)
    with progress:
        report = run_monitor(
            config,
            registry=ThresholdRegistry(),
            on_planned=lambda planned: progress.update(task, total=len(planned)),
            on_window=lambda window: (_print_window(window, progress.console), progress.advance(task)),
        )
    if not report.windows:
        up_to = f"before {config.until.isoformat()}" if config.until else "up to now"
        print(
            f"nothing to do: every complete window of {redact(args.source)} {up_to} is processed and unchanged "
            "(new or late images, or --reprocess, re-open a window)"
        )
    else:
        print(
            f"{len(report.windows)} window(s) processed; alerts queued {report.alerts_queued}, "
            f"delivered {report.alerts_delivered}, pending {report.alerts_pending}"
        )
    check = report.reference_check
    if check is not None and not check.representative:
        print(f"WARNING: the thresholds' reference does not represent this feed: {check.summary()}", file=sys.stderr)
    return 0


def _print_window(window: WindowOutcome, progress_console: Console) -> None:
    """One decided window on stdout, above the progress bar."""
    fired = ", ".join(test.label for test in window.fired) or "-"
    quality = "" if window.data_quality_passed else "  data quality FAILED"
    decision = window.decision
    levels = sorted({severity.level for severity in decision.severity.values()}) if decision else []
    severity = f" ({'/'.join(levels)})" if levels else ""
    lines = [
        f"{window.window_start:%Y-%m-%d %H:%M}  {window.status + severity:<17} n={window.scored:<5} "
        f"rejected={window.rejected:<4} fired: {fired}{quality}"
    ]
    for segment, estimate in decision.accuracy.items() if decision and window.is_drift else []:
        lines.append(f"{'':18}{segment or 'feed'}: {estimate.describe()}")
    # Printed through the bar's console when it draws on this terminal, so the bar stays below the lines.
    for line in lines:
        if progress_console.is_terminal and sys.stdout.isatty():
            progress_console.print(line, highlight=False, markup=False, soft_wrap=True)
        else:
            print(line, flush=True)


def _deployment_parameters(args: argparse.Namespace) -> dict[str, object]:
    """The monitor flow's parameters, as a deployment stores them (plain JSON values).

    Raises:
        GradwatchError: a Beam option carries a credential, which Prefect would keep and show as a parameter.
    """
    pipeline = pipeline_settings(args)
    if pipeline.credential_options():
        raise GradwatchError(
            f"--beam-option {', '.join(pipeline.credential_options())} carries a credential, which a deployment "
            "would store and show as a parameter; set it in the worker's environment (AWS_SECRET_ACCESS_KEY, "
            "AZURE_STORAGE_CONNECTION_STRING...) or a Prefect Secret block instead"
        )
    from flows.registry import tracking_uri

    return {
        # A worker runs the flow from its own working directory: relative paths would name other files there.
        "source": _absolute_location(args.source),
        "out": _absolute_location(args.out),
        "mlflow_uri": _deployable_tracking_uri(tracking_uri()),
        "window": args.window,
        "webhooks": args.webhook,
        "slack_webhooks": args.slack_webhook,
        "scoring": dataclasses.asdict(scoring_settings(args)),
        "pipeline": dataclasses.asdict(pipeline),
    }


def _absolute_location(location: str) -> str:
    """A local path made absolute; a URL (s3://, gs://, file://...) as given."""
    return location if "://" in location else str(Path(location).expanduser().resolve())


def _deployable_tracking_uri(uri: str) -> str:
    """The tracking store this command reads, as a worker elsewhere can reach it.

    Raises:
        GradwatchError: the URI carries a credential, which a deployment would store and show as a parameter.
    """
    from pipelines.redaction import redact

    if redact(uri) != uri:
        raise GradwatchError(
            f"the MLflow tracking URI {redact(uri)!r} carries a credential, which a deployment would store and show "
            "as a parameter; give it without one and set MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD (or "
            "MLFLOW_TRACKING_TOKEN) in the worker's environment"
        )
    sqlite = "sqlite:///"
    if uri.startswith(sqlite) and not uri.startswith(sqlite + "/"):
        return sqlite + str(Path(uri.removeprefix(sqlite)).resolve())
    if "://" not in uri:  # a local folder store
        return str(Path(uri).expanduser().resolve())
    return uri


def _deploy(args: argparse.Namespace) -> int:
    from flows.prefect_flows import deploy

    deployment_id = deploy(
        name=args.name, parameters=_deployment_parameters(args), cron=args.cron, work_pool=args.work_pool
    )
    print(
        f"deployment gradwatch-monitor/{args.name} ({deployment_id}) on work pool {args.work_pool}, cron {args.cron!r}"
    )
    print(f"start a worker with: prefect worker start --pool {args.work_pool}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from flows.prefect_flows import serve

    serve(name=args.name, parameters=_deployment_parameters(args), cron=args.cron)
    return 0


def _report(args: argparse.Namespace) -> int:
    from flows.registry import RegistryUnavailableError, ThresholdRegistry
    from flows.report import write_report

    try:
        registry = ThresholdRegistry()
    except RegistryUnavailableError as error:
        print(f"warning: {error}; the report is drawn without the reference band", file=sys.stderr)
        registry = None
    print(f"report: {write_report(args.out, args.output, registry=registry)}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from flows.demo import DemoConfig, run_demo, summary_lines
    from flows.registry import ThresholdRegistry
    from flows.report import write_report

    started = time.perf_counter()
    workdir = Path(args.workdir)
    config = DemoConfig(hours=args.hours)
    # The last window decided, how many are done and the time left, on stderr; the table follows at the end.
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("left"),
        TimeRemainingColumn(), console=Console(stderr=True), transient=True, redirect_stdout=False,
    )  # fmt: skip
    task = progress.add_task("    scoring the day's images", total=None)

    def planned(windows: Sequence[dt.datetime]) -> None:  # shown from here: the steps before print their own lines
        progress.update(task, total=len(windows))
        progress.start()

    def decided(window: WindowOutcome) -> None:
        description = f"    {window.window_start:%H:%M} {window.status} n={window.scored}"
        progress.update(task, advance=1, description=description)

    try:
        result = run_demo(
            workdir, config, source=Path(args.source) if args.source else None, model=args.model,
            on_planned=planned, on_window=decided,
        )  # fmt: skip
    finally:
        progress.stop()
    registry = ThresholdRegistry(f"sqlite:///{(workdir / 'mlflow.db').resolve()}")
    report = Path(write_report(str(workdir / "out"), str(workdir / "report.html"), registry=registry))
    for line in summary_lines(result, config, registry, report):
        print(line)
    print(f"finished in {time.perf_counter() - started:.0f} s")
    return 0


def _print_table(rows: Sequence[ImageRow], model_id: str) -> None:
    table = Table(title=f"scores from {model_id}")
    table.add_column("file", overflow="fold")
    table.add_column("pred", justify="right")
    for name in TABLE_SCORES:
        table.add_column(name, justify="right")
    for row in rows:
        if row.scores is None:
            table.add_row(row.file, "-", f"rejected: {row.rejected}", "", "")
        else:
            table.add_row(row.file, str(row.pred), *(f"{row.scores[name]:.6g}" for name in TABLE_SCORES))
    # A pipe gets the full table rather than one folded to 80 columns.
    Console(width=None if sys.stdout.isatty() else 200).print(table)


def _write_csv(rows: Sequence[ImageRow], score_names: Sequence[str]) -> None:
    writer = csv.writer(sys.stdout)
    writer.writerow(["file", "pred", *score_names, "rejected"])
    for row in rows:
        scores = row.scores or {}
        writer.writerow(
            [
                row.file,
                "" if row.pred is None else row.pred,
                *(scores.get(n, "") for n in score_names),
                row.rejected or "",
            ]
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gradwatch", description="Drift monitor for image classifiers.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("version", help="print the installed version").set_defaults(run=_version)
    verbosity = argparse.ArgumentParser(add_help=False)
    verbosity.add_argument(
        "-v", "--verbose", action="store_true", help="show the warnings of Beam, MLflow and Great Expectations"
    )
    scoring, pipeline = scoring_parent(parents=[verbosity]), pipeline_parent()
    _add_score_images(commands, scoring)
    _add_score(commands, scoring, pipeline)
    _add_calibrate(commands, scoring, pipeline)
    _add_thresholds(commands, verbosity)
    _add_monitor(commands, scoring, pipeline)
    _add_scheduled(commands, scoring, pipeline)
    _add_report(commands, verbosity)
    _add_demo(commands, verbosity)
    return parser


def _add_score_images(commands, scoring: argparse.ArgumentParser) -> None:
    score = commands.add_parser("score-images", parents=[scoring], help="score every image in a folder, print a table")
    score.add_argument("dir", help="folder of images (searched recursively)")
    score.add_argument("--format", choices=("table", "csv"), default="table", help="stdout format")
    score.set_defaults(run=_score_images)


def _add_score(commands, scoring: argparse.ArgumentParser, pipeline: argparse.ArgumentParser) -> None:
    command = commands.add_parser(
        "score", parents=[scoring, pipeline], help="score SOURCE with the Beam pipeline into window-partitioned Parquet"
    )
    command.add_argument("source", help="folder, prefix (any fsspec URL) or manifest (.csv, .parquet, .jsonl)")
    command.add_argument("--out", required=True, help="output folder or prefix")
    command.add_argument("--window", default="1h", help="event-time window: 1h, 30m, 1d... (default: %(default)s)")
    command.add_argument("--since", help="first event time to score (ISO-8601 or epoch), widened to its window")
    command.add_argument("--until", help="event time to stop before, widened to its window's end")
    _earliest_option(command)
    command.set_defaults(run=_score)


def _add_calibrate(commands, scoring: argparse.ArgumentParser, pipeline: argparse.ArgumentParser) -> None:
    calibrate = commands.add_parser(
        "calibrate", parents=[scoring, pipeline], help="calibrate thresholds on healthy reference images, for review"
    )
    calibrate.add_argument("reference", nargs="?", help="healthy images: folder, prefix or manifest")
    production = calibrate.add_argument_group("calibrating from production (instead of REFERENCE)")
    production.add_argument(
        "--from-out", metavar="OUT", help="take the reference from windows already scored into OUT, not rescored"
    )
    production.add_argument("--since", help="with --from-out: the first window start to take (ISO-8601 or epoch)")
    production.add_argument("--until", help="with --from-out: the window start to stop before")
    calibrate.add_argument(
        "--score",
        help="the score alerts lead with; all are tested (default: the best on --validation-ood sets, else gradnorm)",
    )
    calibrate.add_argument("--tpr", type=float, default=0.95, help="share of healthy images above each threshold")
    calibrate.add_argument("--alpha", type=float, default=0.01, help="family-wise false-alarm rate per window")
    calibrate.add_argument("--min-window", type=positive_int, default=50, help="smallest window that is tested")
    calibrate.add_argument(
        "--validation-ood", action="append", default=[], metavar="DIR", help="known-shifted images, repeatable"
    )
    calibrate.add_argument(
        "--out", help="where the pipeline's outputs go (default: a temporary folder, removed at the end)"
    )
    calibrate.add_argument(
        "--labels", metavar="FILE", help="CSV file,class_index of reference images, for the reference's accuracy"
    )
    calibrate.set_defaults(run=_calibrate)


def _add_thresholds(commands, verbosity: argparse.ArgumentParser) -> None:
    thresholds = commands.add_parser("thresholds", help="review thresholds in MLflow: list, show, approve, reject")
    actions = thresholds.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", parents=[verbosity], help="every version with its review status")
    show = actions.add_parser(
        "show", parents=[verbosity], help="one version: thresholds, false alarms, AUROCs, review status, MLflow links"
    )
    show.add_argument("--json", action="store_true", help="the exact values, as JSON, for scripts")
    approve = actions.add_parser("approve", parents=[verbosity], help="make VERSION the production thresholds")
    reject = actions.add_parser("reject", parents=[verbosity], help="mark VERSION rejected")
    check = actions.add_parser(
        "check",
        parents=[verbosity],
        help="does VERSION's reference represent production? exit 0 when it does, 3 when it does not",
    )
    for action in (listing, show, approve, reject, check):
        model_option(action)
    for action in (show, approve, reject, check):
        action.add_argument("version")
    check.add_argument("--against", required=True, metavar="OUT", help="the OUT whose scored windows are production")
    check.add_argument("--since", help="first window start (default: 24 hours before --until)")
    check.add_argument("--until", help="window start to stop before (default: the end of OUT's latest window)")
    for action in (approve, reject):
        action.add_argument("--by", required=True, type=_reviewer, help="who decides (recorded in the version's tags)")
        action.add_argument("--note", help="why (required to reject)")
    thresholds.set_defaults(run=_thresholds)


def _reviewer(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError(f"must name who decides (it is recorded in the version's tags), got {text!r}")
    return text


def _add_monitor(commands, scoring: argparse.ArgumentParser, pipeline: argparse.ArgumentParser) -> None:
    monitor = commands.add_parser(
        "monitor", parents=[scoring, pipeline], help="process every complete window not yet processed, then exit"
    )
    _add_feed_arguments(monitor)
    monitor.add_argument("--since", help="first window to consider (default: the first one seen)")
    monitor.add_argument("--until", help="stop before this time (default: the last complete window)")
    monitor.add_argument("--reprocess", action="store_true", help="re-process windows already processed")
    _earliest_option(monitor)
    monitor.set_defaults(run=_monitor)


def _add_scheduled(commands, scoring: argparse.ArgumentParser, pipeline: argparse.ArgumentParser) -> None:
    for command, run, summary in (
        ("deploy", _deploy, "create the scheduled monitor deployment on a Prefect server (process work pool)"),
        ("serve", _serve, "run the monitor's schedule in this process, for small setups"),
    ):
        scheduled = commands.add_parser(command, parents=[scoring, pipeline], help=summary)
        _add_feed_arguments(scheduled)
        scheduled.add_argument("--name", default="hourly", help="deployment name (default: %(default)s)")
        # A few minutes after the hour, once the hour's window is complete.
        scheduled.add_argument("--cron", default="5 * * * *", help="schedule (default: %(default)r)")
        if command == "deploy":
            scheduled.add_argument("--work-pool", default="gradwatch", help="process work pool (created if missing)")
        scheduled.set_defaults(run=run)


def _add_feed_arguments(parser: argparse.ArgumentParser) -> None:
    """SOURCE, OUT, the window and the alert targets: what every monitoring command watches and pages."""
    parser.add_argument("source", help="folder, prefix or manifest of production images")
    parser.add_argument("--out", required=True, help="outputs, decisions, watermark and alert outbox")
    parser.add_argument("--window", default="1h", help="event-time window (default: %(default)s)")
    parser.add_argument("--webhook", action="append", default=[], metavar="URL", help="signed generic webhook")
    parser.add_argument("--slack-webhook", action="append", default=[], metavar="URL", help="Slack incoming webhook")


def _add_report(commands, verbosity: argparse.ArgumentParser) -> None:
    report = commands.add_parser(
        "report", parents=[verbosity], help="render OUT's drift report as one self-contained HTML page"
    )
    report.add_argument("out", help="the OUT the monitor writes to")
    report.add_argument("--output", help="where the page goes (default: OUT/report.html)")
    report.set_defaults(run=_report)


def _add_demo(commands, verbosity: argparse.ArgumentParser) -> None:
    demo = commands.add_parser(
        "demo", parents=[verbosity], help="the whole loop, offline, on a simulated day with injected drift"
    )
    demo.add_argument("--source", help="your own healthy images instead of scikit-image's sample photographs")
    demo.add_argument("--workdir", default=".demo", help="where everything goes (default: %(default)s)")
    demo.add_argument("--hours", type=positive_int, default=24, help="hourly windows to simulate")
    model_option(demo)
    demo.set_defaults(run=_demo)


def _version(_args: argparse.Namespace) -> int:
    print(f"gradwatch {installed_version('gradwatch')}")
    return 0


# The packages whose warnings an operator always sees.
OWN_LOGGERS = ("gradwatch", "flows", "pipelines", "scoring")


def _own_warnings_or_errors(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR or record.name.partition(".")[0] in OWN_LOGGERS


def configure_logging(*, verbose: bool) -> None:
    """gradwatch's own warnings always show; the libraries' chatter only with -v.

    Beam warns on the root logger at import (``apitools not found``), MLflow logs each database migration at INFO
    and Great Expectations logs its context set-up: none of it is for an operator.
    """
    logging.basicConfig(level=logging.WARNING if verbose else logging.ERROR, force=True)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    if not verbose:
        # Levels alone do not hold a library back: Great Expectations sets one of its module loggers to INFO
        # itself, under whatever its package's logger says, and printed a line on every monitor run.
        for handler in logging.getLogger().handlers:
            handler.addFilter(_own_warnings_or_errors)
    # MLflow sets its loggers' level from this variable when it is first imported, after this runs.
    os.environ["MLFLOW_LOGGING_LEVEL"] = "INFO" if verbose else "WARNING"
    for name in ("great_expectations", "alembic"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gradwatch`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    configure_logging(verbose=getattr(args, "verbose", False))
    # Python started with -m or -c (Beam's local worker processes are) puts the working directory first on
    # sys.path, where a stray datasketches.py would shadow the real one. A factory spec's module is still found
    # there: scoring.models searches the working directory for that one import.
    os.environ["PYTHONSAFEPATH"] = "1"
    try:
        return args.run(args)
    except GradwatchError as error:
        # Plain print: a message wrapped to the terminal's width would break operators' greps.
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
