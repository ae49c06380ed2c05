"""`tops` command line: one thin command per stage over tops.stages.

Exit codes: 0 done; 2 the user's input is wrong (one line on stderr, nothing written); 1 anything else.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from tops.errors import ServiceError, UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="TOPS: make reasoning models think just enough.")
models_app = typer.Typer(no_args_is_help=True, help="Prepare and inspect models.")
train_app = typer.Typer(no_args_is_help=True, help="Fine-tune with SFT (tag model, TOPS, Iter-SFT) or DPO.")
app.add_typer(models_app, name="models")
app.add_typer(train_app, name="train")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config (see configs/).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a config field: a.b=value.")]
InOpt = Annotated[Path, typer.Option("--in", help="Input artifact (Parquet).")]
OutOpt = Annotated[Path | None, typer.Option("--out", help="Output artifact (default: the run folder).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
LabelOpt = Annotated[str | None, typer.Option(help="The model's name in the output's `model` column (default: its folder name).")]


def _config(config: Path | None, sets: list[str] | None):
    from tops.config import load_config

    return load_config(config, sets)


ShardOpt = Annotated[str, typer.Option(help="I/N: only every N-th problem from the I-th (N processes split the work).")]


def _shard(shard: str) -> tuple[int, int]:
    index, _, count = shard.partition("/")
    if not (index.isdigit() and count.isdigit()):
        raise UserError(f"--shard {shard!r}: expected I/N, e.g. 0/2")
    return int(index), int(count)


def _out(cfg, out: Path | None, name: str) -> Path:
    return out if out is not None else cfg.run.dir / f"{name}.parquet"


@models_app.command("prepare")
def models_prepare(force: Annotated[bool, typer.Option(help="Convert again even if present.")] = False):
    """Convert the embedded SmolLM2-135M-Instruct GGUF into a safetensors folder (once)."""
    from tops.models import prepare_default_model

    typer.echo(prepare_default_model(force=force))


@models_app.command("resolve")
def models_resolve(name: str):
    """Print the folder or Hub id a model name resolves to (preparing aliases on first use)."""
    from tops.models import resolve_model

    typer.echo(resolve_model(name))


@app.command()
def problems(config: ConfigOpt = None, sets: SetOpt = None, out: OutOpt = None,
             n: Annotated[int | None, typer.Option(help="How many problems.")] = None,
             seed: Annotated[int | None, typer.Option(help="Sampling seed.")] = None,
             exclude: Annotated[list[Path] | None, typer.Option(help="Problems artifacts whose ids are never drawn (repeatable).")] = None,
             heldout: Annotated[bool, typer.Option(help="The held-out split: eval.n_problems with the held-out seed.")] = False):
    """Draw problems from the configured source into a problems artifact."""
    from tops.stages import run_problems

    cfg = _config(config, sets)
    path = _out(cfg, out, "problems")
    frame = run_problems(cfg, path, n=n, seed=seed, exclude=exclude or [], heldout=heldout)
    typer.echo(f"{path}: {len(frame)} problems")


@app.command()
def generate(config: ConfigOpt = None, sets: SetOpt = None,
             in_path: Annotated[Path | None, typer.Option("--in", help="Problems artifact (default: draw from config).")] = None,
             out: OutOpt = None,
             model: Annotated[str | None, typer.Option(help="Model alias, folder or Hub id (default: model.base).")] = None,
             label: LabelOpt = None,
             shard: ShardOpt = "0/1",
             quiet: QuietOpt = False):
    """Sample every problem at every effort (resumable: rerun the same command after a kill)."""
    from tops.stages import run_generate

    cfg = _config(config, sets)
    path = _out(cfg, out, "samples")
    run_generate(cfg, path, problems_path=in_path, model=model, progress=not quiet, label=label,
                 shard=_shard(shard))
    typer.echo(str(path))


def _light(stage: str, inputs: dict[str, Path | None], config: Path | None, sets: list[str] | None,
           out: Path | None, **options) -> None:
    """A light stage from the command line; its description (tops.stages.catalog) names its output."""
    from tops.stages import run_light
    from tops.stages import stage as describe

    cfg = _config(config, sets)
    path = _out(cfg, out, describe(stage).output)
    run_light(stage, cfg, path, inputs, **options)
    typer.echo(str(path))


@app.command()
def verify(in_path: InOpt, config: ConfigOpt = None, sets: SetOpt = None, out: OutOpt = None,
           quiet: QuietOpt = False):
    """Extract and check every answer with verify.checker (math, exact, choice or an installed one; per-item timeout)."""
    _light("verify", {"samples": in_path}, config, sets, out, progress=not quiet)


@app.command()
def select(in_path: InOpt, config: ConfigOpt = None, sets: SetOpt = None, out: OutOpt = None,
           policy: Annotated[str | None, typer.Option(help="shortest | random | laser-d")] = None,
           seed_data: Annotated[Path | None, typer.Option(help="Seed samples whose low-effort rows are appended.")] = None):
    """Keep one correct response per problem (TOPS: the shortest)."""
    sets = list(sets or []) + ([f"select.policy={policy}"] if policy else [])
    _light("select", {"verified": in_path, "seed": seed_data}, config, sets, out)


@app.command()
def pairs(in_path: InOpt, config: ConfigOpt = None, sets: SetOpt = None, out: OutOpt = None):
    """DPO pairs: shortest correct vs longest incorrect (+ shorter-incorrect pairs)."""
    _light("pairs", {"verified": in_path}, config, sets, out)


@app.command()
def mask(in_path: InOpt, config: ConfigOpt = None, sets: SetOpt = None, out: OutOpt = None,
         quiet: QuietOpt = False):
    """Find erroneous reasoning rounds and store them as character spans to keep out of the loss."""
    _light("mask", {"selected": in_path}, config, sets, out, progress=not quiet)


def _train_command(method: str) -> None:
    """`tops train <method>` for each training method of tops.stages.catalog.TRAIN_METHODS."""
    from tops.stages.catalog import TRAIN_METHODS

    spec = TRAIN_METHODS[method]
    kinds = " | ".join(spec.kinds)

    def command(data, out, base=None, config=None, sets=None, kind=spec.kinds[0]):
        from tops.stages import run_train

        summary = run_train(_config(config, sets), method, data, kind, out, base=base, argv=sys.argv[1:])
        if summary is not None:
            typer.echo(f"{out}: loss {summary.get('final_loss')}")

    # set here, not written in the signature: this module's annotations are strings, read in its globals
    command.__annotations__ = {
        "data": Annotated[Path, typer.Option(spec.data_option, help=f"{kinds} artifact.")],
        "out": Annotated[Path, typer.Option(help="Output model folder.")],
        "base": Annotated[str | None, typer.Option(help="Base model (default: model.base).")],
        "config": ConfigOpt, "sets": SetOpt,
        "kind": Annotated[str, typer.Option(help=f"Artifact kind of {spec.data_option}: {kinds}.")]}
    command.__doc__ = spec.help
    train_app.command(method)(command)


def _train_commands() -> None:
    from tops.stages.catalog import TRAIN_METHODS

    for method in TRAIN_METHODS:
        _train_command(method)


_train_commands()


@app.command("eval")
def eval_cmd(models: Annotated[list[str], typer.Option("--model", help="Model(s) to evaluate (repeatable).")],
             config: ConfigOpt = None, sets: SetOpt = None, out: OutOpt = None,
             train_data: Annotated[list[Path] | None, typer.Option(help="Problems artifacts used for seed/training: excluded by id, checked for n-gram overlap.")] = None,
             problems_path: Annotated[Path | None, typer.Option("--problems", help="Held-out problems artifact (default: drawn from config).")] = None,
             labels: Annotated[list[str] | None, typer.Option("--label", help="Name of each --model in the `model` column (repeatable, in order).")] = None,
             shard: ShardOpt = "0/1",
             quiet: QuietOpt = False):
    """Held-out accuracy and tokens per model, effort and difficulty (Markdown table + artifact)."""
    from tops import tracking
    from tops.stages import run_eval

    cfg = _config(config, sets)
    path = _out(cfg, out, "eval")
    tracking.check(cfg.train.report_to)
    table = run_eval(cfg, path, models, train_data or [], progress=not quiet, problems_path=problems_path,
                     labels=labels, shard=_shard(shard))
    if _shard(shard)[1] == 1:  # a shard's part is one of several: the merged artifact is what counts
        tracking.log_eval_file(cfg.train.report_to, path, table)
    typer.echo(table)


@app.command("seed")
def seed_cmd(config: ConfigOpt = None, sets: SetOpt = None, out: OutOpt = None,
             in_path: Annotated[Path | None, typer.Option("--in", help="Seed problems (default: draw from config).")] = None,
             shard: ShardOpt = "0/1"):
    """Seed data: a teacher answers at every effort; keep all-correct problems, re-order by length,
    keep wide length gaps."""
    from tops.stages import run_seed

    cfg = _config(config, sets)
    path = _out(cfg, out, "seed")
    run_seed(cfg, path, problems_path=in_path, shard=_shard(shard))
    typer.echo(str(path))


@app.command("run")
def run_cmd(config: ConfigOpt = None, sets: SetOpt = None,
            dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan (every stage, cached or to run, "
                                                                    "its command and processes); run nothing.")] = False):
    """Run the whole TOPS loop as a Prefect flow (reruns reuse every finished stage)."""
    if dry_run:
        from tops.flow.pipeline import plan
        from tops.flow.ray_cluster import describe_cluster
        from tops.flow.stage_loop import format_plan

        cfg = _config(config, sets)
        cluster = describe_cluster(cfg)  # flow.runner: ray with cluster.address: its nodes and GPUs first
        if cluster:
            typer.echo(cluster + "\n")
        typer.echo(format_plan(plan(cfg), cfg.run.dir))
        return
    _run_flow(config, sets)


@app.command("demo")
def demo_cmd(sets: SetOpt = None,
             loop_seeds: Annotated[list[int] | None, typer.Option(
                 "--loop-seed", help="Run the whole loop once per seed (repeatable; run.seed and a run name "
                                     "per seed) and add the across-runs table.")] = None,
             write_readme: Annotated[bool, typer.Option(
                 "--write-readme", help="Maintainers: also rewrite README.md's results section and docs/demo/ "
                                        "(the checkout's tracked files) from these runs.")] = False,
             laser: Annotated[bool, typer.Option(
                 "--laser", help="After `tops demo`: its TOPS model continues with LASER-D (GRPO, "
                                 "configs/laser-demo.yaml), both evaluated on its held-out problems.")] = False):
    """The whole loop on the embedded default (SmolLM2-135M-Instruct, arith) on this machine; the
    report, plots and across-runs table are written in the run folders."""
    import time

    repo = Path(__file__).resolve().parents[1]
    if laser:  # tops/laser_demo.py
        from tops.laser_demo import run_laser_demo

        config = next((c for c in (Path("configs/laser-demo.yaml"), repo / "configs" / "laser-demo.yaml")
                       if c.exists()), None)
        if config is None:
            raise UserError("configs/laser-demo.yaml not found: run `tops demo --laser` from the tops checkout")
        typer.echo(run_laser_demo(config, _config(config, sets), sets).read_text())
        return
    config = next((c for c in (Path("configs/demo.yaml"), repo / "configs" / "demo.yaml") if c.exists()), None)
    if config is None:
        raise UserError("configs/demo.yaml not found: run `tops demo` from the tops checkout")
    cfg = _config(config, sets)
    name = cfg.run.name
    runs = []
    from tops.demo import demo_plan, finish, readme_to_write

    readme = readme_to_write(repo) if write_readme else None

    for seed, run_sets in demo_plan(name, cfg.run.seed, sets, loop_seeds).items():
        started = time.perf_counter()
        result = _run_flow(config, run_sets)
        result["minutes"] = (time.perf_counter() - started) / 60
        typer.echo(f"demo wall time (run.seed={seed}): {result['minutes']:.1f} min")
        runs.append(result)
    typer.echo(finish(runs, name, readme))


@app.command("compare")
def compare_cmd(run_dirs: Annotated[list[Path], typer.Argument(help="Finished run folders (2 or more).")],
                out: Annotated[Path | None, typer.Option("--out", help="Also write the Markdown here (and its plot, .png).")] = None):
    """Several runs of the loop side by side: mean and spread over runs, goals met per run."""
    from tops.compare import compare_markdown, load_run, write_comparison

    runs = [load_run(d) for d in run_dirs]
    typer.echo(write_comparison(runs, out) if out is not None else compare_markdown(runs))


def _run_flow(config: Path | None, sets: list[str] | None) -> dict:
    from tops.flow.pipeline import run
    from tops.launch import stop_on_signals

    stop_on_signals()  # a background run (nohup, cron, a service) stops cleanly on SIGINT / SIGTERM

    from tops.tracking import check_run

    check_run(_config(config, sets))  # fail fast, before Prefect starts (trackers included)
    from tops.flow.orphans import watch

    watch(os.getpid())  # killed with -9, the run's temporary Prefect server still stops (tops/flow/orphans.py)
    result = run(str(config) if config else None, list(sets or []))
    if result.get("nothing_new"):  # a later round with nothing to learn from changed nothing
        typer.echo(result["nothing_new"])
        return result
    report = Path(result["report"])
    typer.echo(report.read_text())
    typer.echo(f"\nrun folder: {result['run_dir']}\nreport: {report}")
    if result.get("export_error"):  # every other stage finished; only the export failed
        print(f"error: {result['export_error']}", file=sys.stderr)
        raise typer.Exit(1)
    return result


@app.command("serve")
def serve_cmd(config: ConfigOpt = None, sets: SetOpt = None,
              cron: Annotated[str, typer.Option(help="Cron schedule, e.g. '0 3 * * *'.")] = "0 3 * * *",
              name: Annotated[str | None, typer.Option(help="Deployment name (default: run.name).")] = None):
    """Register a scheduled deployment of the loop and serve it (Ctrl-C to stop)."""
    from tops.flow.deploy import serve

    cfg = _config(config, sets)
    serve(str(config) if config else None, list(sets or []), cron=cron, name=name or cfg.run.name)


@app.command("export")
def export(run: Annotated[str, typer.Option("--run", help="Run folder, or a run name under data/runs.")],
           repo_id: Annotated[str, typer.Option("--repo-id", help="Hub dataset repo: ORG/NAME.")],
           private: Annotated[bool, typer.Option("--private/--public", help="Visibility of a newly created repo.")] = True,
           local_dir: Annotated[Path | None, typer.Option("--local-dir", help="Write the files that would be uploaded here instead.")] = None,
           dry_run: Annotated[bool, typer.Option("--dry-run", help="List the files and sizes; write and upload nothing.")] = False,
           license_id: Annotated[str, typer.Option("--license", help="License id for the dataset card.")] = "apache-2.0",
           timeout_s: Annotated[float, typer.Option("--timeout-s", min=1, max=86400,
                                                    help="Deadline of each Hub request, its upload included.")] = 600.0,
           model_repo_id: Annotated[str | None, typer.Option("--model-repo-id", help="Also the run's latest model, with its model card, to this Hub model repo: ORG/NAME.")] = None):
    """Export a run's datasets (samples, sft, dpo, eval configs + dataset card) to the Hugging Face Hub;
    with --model-repo-id its latest model too (tops/hub/model_card.py)."""
    from tops.hub import check_repo_id, export_run, format_result, resolve_run_dir
    from tops.hub.model_card import export_latest_model, latest_round

    record = None
    if model_repo_id:  # checked before anything is written or sent
        check_repo_id(model_repo_id)
        record = latest_round(resolve_run_dir(run))
    result = export_run(run, repo_id, private=private, local_dir=local_dir, dry_run=dry_run,
                        license=license_id, timeout_s=timeout_s, model_repo_id=model_repo_id)
    typer.echo(format_result(result))
    if record is not None and dry_run:
        typer.echo(f"would push round {record.number}'s model ({record.model_label}) with its card to {model_repo_id}")
    elif record is not None:
        folder, url = export_latest_model(result.run_dir, model_repo_id, dataset_repo_id=repo_id, private=private,
                                          push=local_dir is None, timeout_s=timeout_s)
        typer.echo(f"{url}: round {record.number}'s model with its card" if url else
                   f"{folder}: round {record.number}'s model with its card, as it would go to {model_repo_id}")


@app.command("rounds")
def rounds_cmd(run: Annotated[str, typer.Argument(help="Run folder, or a run name under data/runs.")]):
    """The rounds of a run folder: parent, inputs, latest model, held-out accuracy and tokens per round."""
    from tops.hub import resolve_run_dir
    from tops.rounds import rounds_text

    typer.echo(rounds_text(resolve_run_dir(run)))


def main(argv: list[str] | None = None) -> None:
    from tops.launch import exit_with_parent

    exit_with_parent()  # a stage the flow started dies with the flow
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The ephemeral Prefect server can take longer than its default 20 s on a busy 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    # Typer's standalone mode reports its own usage errors (unknown option, missing argument:
    # exit 2) and Ctrl-C; our input errors surface as UserError. Newer typer versions vendor
    # click, so catching click's exception classes here would miss theirs.
    try:
        app(args=argv, prog_name="tops")
    except UserError as exc:
        _last_line(f"error: {one_line(str(exc))}")
        sys.exit(2)
    except ServiceError as exc:  # a server failed for good after its retries: not the input's fault
        _last_line(f"error: {one_line(str(exc))}")
        sys.exit(1)


def _last_line(line: str) -> None:
    """The error line goes last on stderr: logging stops first, so what Prefect logs while it shuts
    down (its temporary server, its event worker) cannot follow it."""
    import logging

    logging.disable(logging.CRITICAL)
    sys.stderr.flush()
    print(line, file=sys.stderr, flush=True)


def one_line(message: str, limit: int = 1000) -> str:
    """An error as one line of bounded length, whatever input it quotes."""
    line = " ".join(message.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


if __name__ == "__main__":
    main()
