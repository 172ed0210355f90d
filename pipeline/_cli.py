"""``factflow demo``, ``factflow storage ...`` and ``factflow execution replay``.

``demo_app`` and ``storage_app`` are mounted by the root app; ``replay_command``
is attached to the query side's ``execution`` group (``execution replay``).
Narration goes to stderr where stdout is meant for a program (``storage get``
prints the stored bytes; ``execution replay`` prints the new execution id).
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from enum import StrEnum
from typing import Annotated, Any
from uuid import UUID

import typer

from factflow_lineage import query as q
from factflow_lineage.cli import Output
from factflow_lineage.config import Settings
from factflow_lineage.consumer import ProjectionOwned, ProjectorConfig
from factflow_lineage.db import connect
from factflow_lineage.errors import BrokerUnavailable, NotFound, UsageError
from factflow_lineage.producer import LineageRecorder, RecorderConfig
from factflow_lineage.query import LineageRow
from factflow_lineage.query import _format as fmt

from . import _demo as demo
from ._catchup import catch_up, topic_end
from ._engine import Pipeline, Progress, Route, StageCounts, stage_counts_line
from ._replay import plan_replay, replay
from ._storage import Storage, StorageSettings, execution_prefix

# Routes of each pipeline this process can run, by pipeline name: replay looks
# the original execution's pipeline up here. ``fixed`` deploys the fixed adapters.
PIPELINES: dict[str, Callable[[Storage, bool], Mapping[str, Route]]] = {
    demo.PIPELINE: lambda storage, fixed: demo.demo_routes(storage, fixed=fixed),
}
_FLUSH_TIMEOUT = 15.0


def _projector_group(value: str | None) -> str | None:
    """Refuse an empty group before anything runs, naming this command's option."""
    if value is not None and not value.strip():
        raise UsageError(
            "--projector-group must not be empty (omit it for the default consumer group)"
        )
    return value


ProjectorGroupOpt = Annotated[
    str | None,
    typer.Option(
        "--projector-group",
        help="Consumer group of the projector run here (that of your `projector run` service) "
        "[default: that of `projector run`, factflow-projector.<topic>.<schema>.<digest>].",
        show_default=False,
        callback=_projector_group,
    ),
]


class RawOrJson(StrEnum):
    raw = "raw"
    json = "json"


demo_app = typer.Typer(
    name="demo",
    help="Run the demo pipeline (sitemap -> 42 pages, 2 failures) and show its lineage.",
    invoke_without_command=True,
)
storage_app = typer.Typer(
    name="storage",
    help="Stored input messages: read the bytes an adapter got.",
    no_args_is_help=True,
)


def _err(text: str) -> None:
    typer.echo(text, err=True)


@contextmanager
def _reader(settings: Settings) -> Iterator[Any]:
    """One read-only connection to the projection, its errors translated."""
    schema = settings.postgres.schema
    with (
        q.database_errors(schema),
        connect(settings.postgres.read_dsn, schema=schema, autocommit=True) as conn,
    ):
        yield conn


@contextmanager
def _recorder() -> Iterator[LineageRecorder]:
    """The process's recorder; its events are on the broker when the block ends."""
    recorder = LineageRecorder(RecorderConfig.from_env())
    try:
        yield recorder
        left = recorder.flush(_FLUSH_TIMEOUT)
        if left:
            raise BrokerUnavailable(
                f"{left} lineage events not acknowledged by Kafka after {_FLUSH_TIMEOUT:.0f} s "
                "(they stay in the spool and are re-sent by the next recorder)"
            )
    finally:
        recorder.close()


def _check_stack(settings: Settings, *, projection: bool) -> None:
    """Fail before recording anything when the broker, topic or projection is missing."""
    topic_end(settings, timeout=5.0)
    if projection:
        with _reader(settings) as conn:
            q.ping(conn)


class _LiveCounters:
    """Per-stage counters while a run goes: bars on a terminal, else one summary line."""

    def __init__(self, stages: tuple[str, ...]) -> None:
        self.stages = stages
        self.last: Mapping[str, StageCounts] | None = None
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> Progress:
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
            from rich.progress import Progress as Bars

            self._progress = Bars(
                TextColumn("{task.description:>22}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[failed]}"),
                console=Console(stderr=True),
                transient=False,
            )
            self._progress.start()
            for name in self.stages:
                self._tasks[name] = self._progress.add_task(name, total=None, failed="")
        return self.update

    def update(self, counts: Mapping[str, StageCounts]) -> None:
        self.last = counts
        if self._progress is None:
            return
        for name in self.stages:
            c = counts[name]
            self._progress.update(
                self._tasks[name],
                completed=c.done,
                total=c.queued or None,
                failed=f"[red]{c.failed} failed[/red]" if c.failed else "",
            )

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
        elif self.last is not None:
            _err(stage_counts_line(self.last, self.stages))


def _catch_up(settings: Settings, group: str | None) -> None:
    try:
        result = catch_up(settings, config=ProjectorConfig(group_id=group))
    except ProjectionOwned as e:
        if e.owner is None:
            raise
        # The projector's own hint names the options of `projector run`
        # (--group, --take-over); this command's group is --projector-group.
        owner = e.owner
        topic = settings.kafka.topic
        raise ProjectionOwned(
            f"schema {settings.postgres.schema!r} is owned by consumer group "
            f"{owner.group_id!r} (topic {owner.topic!r}); run this command with "
            f"--projector-group {owner.group_id}"
            + ("" if owner.topic == topic else f" and FACTFLOW_TOPIC={owner.topic}")
            + ", or with --no-projector (that group's `factflow projector run` projects it)",
            owner=owner,
        ) from e
    if result.events:
        _err(f"projector: {result.events} events projected in {result.seconds:.1f} s")


def _show_execution(settings: Settings, execution_id: UUID) -> LineageRow | None:
    """Print what the operator's first commands show about a run: stats, failures, one chain.

    Returns the most recent failure, if any.
    """
    style = fmt.Style(colour=sys.stdout.isatty())
    with _reader(settings) as conn:
        stats = q.stats(conn, execution_id)
        failures = q.failures(conn, execution=execution_id, limit=10)
        chain = q.chain(conn, failures.rows[0].id, max_nodes=60) if failures.rows else None
    typer.echo(f"\n$ factflow lineage stats --execution {execution_id}")
    typer.echo(fmt.stats_table(stats.rows, style) if stats.rows else "(no rows)")
    if not failures.rows:
        return None
    typer.echo(f"\n$ factflow lineage failures --execution {execution_id}")
    typer.echo(fmt.table(fmt.FAILURE_COLUMNS, failures.rows, style))
    assert chain is not None
    typer.echo(f"\n$ factflow lineage chain {chain.target}")
    typer.echo(fmt.chain_tree(chain, style))
    return failures.rows[0]


@demo_app.callback()
def demo_command(
    fixed: Annotated[
        bool,
        typer.Option(
            "--fixed",
            help="Deploy the fixed web_scraper (retries 503s, honours the page charset).",
            envvar="FACTFLOW_DEMO_FIXED",
        ),
    ] = False,
    no_projector: Annotated[
        bool,
        typer.Option(
            "--no-projector",
            help="Do not run the projector here (a `factflow projector run` service does).",
        ),
    ] = False,
    projector_group: ProjectorGroupOpt = None,
) -> None:
    """Run the demo pipeline over the shipped sitemap and show its lineage.

    Needs the stack and `factflow init` (scripts/demo does both).
    """
    settings = Settings.from_env()
    storage = StorageSettings.from_env().open()
    _check_stack(settings, projection=not no_projector)
    routes = demo.demo_routes(storage, fixed=fixed)
    route = routes[demo.ROUTE]
    _err(
        f"demo: route {route.id} ({' -> '.join(route.stage_names)}), "
        f"{'fixed' if fixed else 'as first deployed'} web_scraper; storage {storage.root}"
    )
    with _recorder() as recorder, _LiveCounters(route.stage_names) as progress:
        pipeline = Pipeline(recorder, storage, pipeline=demo.PIPELINE)
        result = pipeline.run(
            route, [demo.sitemap_message()], metadata={"demo_fixed": fixed}, progress=progress
        )
    eid = result.execution_id
    typer.echo(
        f"execution {eid}: {result.status} "
        f"({result.invocations} invocations, {result.failed} failed)"
    )
    if no_projector:
        _err("projector not run here: the lineage shows up once a projector has caught up")
        _next_steps(eid, None)
        return
    _catch_up(settings, projector_group)
    _next_steps(eid, _show_execution(settings, eid))


def _next_steps(execution_id: UUID, failure: LineageRow | None) -> None:
    steps = [f"factflow execution get {execution_id}"]
    if failure is not None:
        steps.append(f"factflow lineage get {failure.id}")
        if failure.input_key is not None:
            steps.append(f"factflow storage get {failure.input_key}")
        steps.append(
            f"factflow execution replay {execution_id} --from-stage {failure.adapter_name} --fixed"
        )
    steps.append(f"factflow storage list --execution {execution_id}")
    typer.echo("\nNext, try:\n" + "\n".join(f"  {s}" for s in steps))


# --- storage ---------------------------------------------------------------------------


@storage_app.command("get")
def storage_get(
    key: Annotated[str, typer.Argument(help="Storage key, e.g. a lineage row's input_key.")],
    output: Annotated[
        RawOrJson,
        typer.Option("--output", "-o", help="raw: the bytes as stored; json: one document."),
    ] = RawOrJson.raw,
) -> None:
    """Print the bytes stored under KEY (what tripped the adapter)."""
    data = StorageSettings.from_env().open().get(key)
    if output is RawOrJson.raw:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    try:
        text, encoding = data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(data).decode("ascii"), "base64"
    document = {"key": key, "size": len(data), "encoding": encoding, "data": text}
    typer.echo(json.dumps(document, indent=2, ensure_ascii=False))


@storage_app.command("list")
def storage_list(
    execution: Annotated[
        str, typer.Option("--execution", "-e", help="Execution id (or a unique 8+ hex prefix).")
    ],
    stage: Annotated[str | None, typer.Option(help="Only this stage's inputs.")] = None,
    output: Annotated[
        Output, typer.Option("--output", "-o", help="table, or json for jq.")
    ] = Output.table,
) -> None:
    """The stored input messages of one execution: KEY and SIZE."""
    storage = StorageSettings.from_env().open()
    execution_id = _execution_id(execution)
    keys = storage.list(execution_prefix(str(execution_id)))
    if stage is not None:
        keys = [k for k in keys if k.split("/")[3] == stage]
    if not keys:
        raise NotFound(f"storage {storage.root} holds nothing of execution {execution_id}")
    sizes = [(k, storage.size(k)) for k in keys]
    if output is Output.json:
        typer.echo(json.dumps([{"key": k, "size": n} for k, n in sizes], indent=2))
        return
    width = max(len(k) for k, _ in sizes)
    typer.echo(f"{'KEY'.ljust(width)}  {'SIZE':>8}")
    for k, n in sizes:
        typer.echo(f"{k.ljust(width)}  {n:>8}")


def _execution_id(text: str) -> UUID:
    """A full id is used as typed; a prefix is resolved against the projection."""
    try:
        return UUID(text.strip())
    except ValueError:
        pass
    settings = Settings.from_env()
    with _reader(settings) as conn:
        resolved: UUID = q.resolve_execution_id(conn, text)
    return resolved


# --- replay ----------------------------------------------------------------------------


def replay_command(
    execution_id: Annotated[
        str, typer.Argument(help="The execution to replay (id or a unique 8+ hex prefix).")
    ],
    from_stage: Annotated[
        str, typer.Option("--from-stage", help="Re-publish this stage's stored inputs.")
    ],
    to_route: Annotated[
        str | None,
        typer.Option("--to-route", help="Into this route (default: the one they came from)."),
    ] = None,
    everything: Annotated[
        bool,
        typer.Option(
            "--all",
            help="Every input of the stage, not only those whose message did not get through.",
        ),
    ] = False,
    fixed: Annotated[
        bool,
        typer.Option(
            "--fixed", help="Demo: run the fixed web_scraper.", envvar="FACTFLOW_DEMO_FIXED"
        ),
    ] = False,
    no_projector: Annotated[
        bool, typer.Option("--no-projector", help="Do not run the projector here afterwards.")
    ] = False,
    projector_group: ProjectorGroupOpt = None,
    output: Annotated[
        Output, typer.Option("--output", "-o", help="table (the new id), or json.")
    ] = Output.table,
) -> None:
    """Run STAGE and everything downstream again, on its stored inputs, as a new execution.

    Prints the new execution's id. Fails, listing the keys, when storage no
    longer holds some inputs.
    """
    settings = Settings.from_env()
    storage = StorageSettings.from_env().open()
    with _reader(settings) as conn:
        original = q.get_execution(conn, execution_id)
        make_routes = PIPELINES.get(original.pipeline or "")
        if make_routes is None:
            raise NotFound(
                f"execution {original.id} ran pipeline {original.pipeline!r}, "
                f"whose routes this process does not know (known: {', '.join(PIPELINES)})"
            )
        routes = make_routes(storage, fixed)
        plan = plan_replay(
            conn,
            storage,
            original.id,
            from_stage,
            routes=routes,
            to_route=to_route,
            everything=everything,
        )
    _check_stack(settings, projection=False)
    _err(
        f"replay: {len(plan.inputs)} stored input(s) of {plan.stage} in execution "
        f"{plan.execution_id} -> route {plan.target_route}"
        + (
            f" ({plan.skipped_completed} that got through left out; --all adds them)"
            if plan.skipped_completed
            else ""
        )
    )
    if plan.unprojected:
        _err(
            f"warning: {len(plan.unprojected)} stored input(s) have no lineage row "
            "(projector behind?) and are not replayed"
        )
    target = routes[plan.target_route]
    stages = target.stage_names[target.index(plan.stage) :]
    with _recorder() as recorder, _LiveCounters(stages) as progress:
        pipeline = Pipeline(recorder, storage, pipeline=plan.pipeline)
        result = replay(pipeline, plan, routes, progress=progress)
    if not no_projector:
        _catch_up(settings, projector_group)
    if output is Output.json:
        document = {
            "execution_id": str(result.execution_id),
            "replay_of": str(plan.execution_id),
            "replay_from_stage": plan.stage,
            "route": plan.target_route,
            "status": result.status,
            "inputs": [i.key for i in plan.inputs],
            "stages": {
                n: {"completed": c.completed, "failed": c.failed}
                for n, c in result.counts.items()
                if n in stages
            },
        }
        typer.echo(json.dumps(document, indent=2))
        return
    _err(f"replay execution {result.execution_id}: {result.status}")
    typer.echo(str(result.execution_id))
