"""`tops` command line: one thin command per stage over tops.stages.

Exit codes: 0 done; 2 the user's input is wrong (one line on stderr, nothing written); 1 anything else.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import click
import typer

from tops.errors import UserError

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


def _config(config: Path | None, sets: list[str] | None):
    from tops.config import load_config

    return load_config(config, sets)


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
             seed: Annotated[int | None, typer.Option(help="Sampling seed.")] = None):
    """Draw problems from the configured source into a problems artifact."""
    from tops.stages import run_problems

    cfg = _config(config, sets)
    path = _out(cfg, out, "problems")
    frame = run_problems(cfg, path, n=n, seed=seed)
    typer.echo(f"{path}: {len(frame)} problems")


@app.command()
def generate(config: ConfigOpt = None, sets: SetOpt = None,
             in_path: Annotated[Path | None, typer.Option("--in", help="Problems artifact (default: draw from config).")] = None,
             out: OutOpt = None,
             model: Annotated[str | None, typer.Option(help="Model alias, folder or Hub id (default: model.base).")] = None,
             quiet: QuietOpt = False):
    """Sample every problem at every effort (resumable: rerun the same command after a kill)."""
    from tops.stages import run_generate

    cfg = _config(config, sets)
    path = _out(cfg, out, "samples")
    run_generate(cfg, path, problems_path=in_path, model=model, progress=not quiet)
    typer.echo(str(path))


@app.command()
def verify(in_path: InOpt, config: ConfigOpt = None, sets: SetOpt = None, out: OutOpt = None,
           quiet: QuietOpt = False):
    """Extract and check every answer (math-verify + numeric fallback, per-item timeout)."""
    from tops.stages import run_verify

    cfg = _config(config, sets)
    path = _out(cfg, out, "verified")
    run_verify(cfg, in_path, path, progress=not quiet)
    typer.echo(str(path))


@app.command()
def select(in_path: InOpt, config: ConfigOpt = None, sets: SetOpt = None, out: OutOpt = None,
           policy: Annotated[str | None, typer.Option(help="shortest | random | laser-d")] = None,
           seed_data: Annotated[Path | None, typer.Option(help="Seed samples whose low-effort rows are appended.")] = None):
    """Keep one correct response per problem (TOPS: the shortest)."""
    from tops.stages import run_select

    sets = list(sets or []) + ([f"select.policy={policy}"] if policy else [])
    cfg = _config(config, sets)
    path = _out(cfg, out, "selected")
    run_select(cfg, in_path, path, seed_path=seed_data)
    typer.echo(str(path))


@app.command()
def pairs(in_path: InOpt, config: ConfigOpt = None, sets: SetOpt = None, out: OutOpt = None):
    """DPO pairs: shortest correct vs longest incorrect (+ shorter-incorrect pairs)."""
    from tops.stages import run_pairs

    cfg = _config(config, sets)
    path = _out(cfg, out, "pairs")
    run_pairs(cfg, in_path, path)
    typer.echo(str(path))


@app.command()
def mask(in_path: InOpt, config: ConfigOpt = None, sets: SetOpt = None, out: OutOpt = None,
         quiet: QuietOpt = False):
    """Find erroneous reasoning rounds and store them as character spans to keep out of the loss."""
    from tops.stages import run_mask

    cfg = _config(config, sets)
    path = _out(cfg, out, "masked")
    run_mask(cfg, in_path, path, progress=not quiet)
    typer.echo(str(path))


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    try:
        app(args=argv, prog_name="tops", standalone_mode=False)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except click.exceptions.UsageError as exc:
        exc.show()
        sys.exit(2)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
