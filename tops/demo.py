"""`tops demo` only: the loop once per loop seed; its report, plots and across-runs table stay in
the run folders (a user's checkout is left as it was). Maintainers pass `--write-readme` to put
them in the README's results section and docs/demo/ (never by hand)."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from tops.layout import RunLayout


def demo_plan(name: str, seed: int, sets: list[str] | None, loop_seeds: list[int] | None) -> dict[int, list[str]]:
    """run.seed -> overrides. Without loop seeds: one run exactly as configured. With them: one run
    per seed, named `<name>-seed<k>`; seed 0 keeps the plain name (the usual run folder)."""
    if not loop_seeds:
        return {seed: list(sets or [])}
    return {k: [*(sets or []), f"run.seed={k}", f"run.name={name if k == 0 else f'{name}-seed{k}'}"]
            for k in dict.fromkeys(loop_seeds)}


def finish(runs: list[dict], name: str, readme: Path | None) -> str:
    """After the runs: the across-runs table when there are several (beside the run folders), the
    README's results section when `readme` is given; returns where everything was written."""
    lines = ["", "demo results (all in the run folders):"]
    for result in runs:
        report = RunLayout(Path(result["run_dir"])).report
        plots = sorted(p.name for p in report.parent.glob("*.png"))
        lines.append(f"  report {report}" + (f", plots {', '.join(plots)} beside it" if plots else ""))
    comparison = None
    if len(runs) > 1:
        from tops.compare import load_run, write_comparison

        path = Path(runs[0]["run_dir"]).parent / f"{name}-seeds.md"
        comparison = write_comparison([load_run(Path(r["run_dir"])) for r in runs], path)
        lines[:0] = ["", comparison]
        lines.append(f"  across runs {path}, plot {path.with_suffix('.png').name} beside it")
    if readme is not None:
        update_readme_results(readme, runs, comparison)
        lines.append(f"  rewrote the results section of {readme} and {readme.parent / 'docs' / 'demo'}/")
    return "\n".join(lines)


README_START = "<!-- demo-results:start -->"
README_END = "<!-- demo-results:end -->"


def readme_to_write(repo: Path) -> Path:
    """The checkout's README.md for `--write-readme`, checked before any run starts."""
    from tops.errors import UserError

    readme = repo / "README.md"
    if not readme.exists() or README_START not in (text := readme.read_text()) or README_END not in text:
        raise UserError(f"--write-readme: {readme} has no results section ({README_START} ... {README_END})")
    return readme


def run_time_line(result: dict) -> str:
    """How long one run took, honest about stages reused from an earlier run's cache."""
    name, wall = Path(result["run_dir"]).name, result.get("minutes", 0.0)
    stages, reused = result.get("stages", 0), result.get("stages_reused", 0)
    if not reused:
        return f"`{name}` {wall:.1f} min, all {stages} stages computed"
    recorded = result.get("stage_minutes", 0.0)
    when_ran = f"{recorded:.1f} min when they ran" if recorded else "their time was not recorded"
    return f"`{name}` {wall:.1f} min with {reused} of {stages} stages reused from an earlier run ({when_ran})"


def update_readme_results(readme: Path, runs: list[dict], comparison: str | None = None) -> None:
    """Put the demo's own report (tables, shape checks, plots; the across-runs table when the loop
    ran with several seeds) between README's markers, so the numbers there always come from a
    run, never from a hand. `runs` are the flow results, the first one's report in full."""
    import shutil

    from tops.errors import UserError

    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise UserError(f"{readme} has no results section ({README_START} ... {README_END}) to write")

    report = RunLayout(Path(runs[0]["run_dir"])).report
    rel = os.path.relpath(report.parent, readme.parent)
    plots = readme.parent / "docs" / "demo"  # run folders are git-ignored; the plots are kept here
    plots.mkdir(parents=True, exist_ok=True)
    for png in [*report.parent.glob("*.png"), *report.parent.parent.glob("*-seeds*.png")]:
        shutil.copy2(png, plots / png.name)
    # without the report's title; its sections one level down when the runs together come first
    body = _readme_markdown(report.read_text().split("\n", 1)[1], "####" if comparison else "###")
    if comparison:  # the runs together first: the goals are judged there
        body = (f"### Across whole-loop seeds\n\n{_readme_markdown(comparison, '####')}\n\n"
                f"### Run `{Path(runs[0]['run_dir']).name}` in detail\n{body}")
    stamp = (f"_Written by `tops demo` on {time.strftime('%Y-%m-%d')} from `{rel}/report.md` on this machine "
             f"({os.cpu_count()} cores): " + "; ".join(run_time_line(r) for r in runs) + "._")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(f"{head}{README_START}\n{stamp}\n{body.strip()}\n{README_END}{tail}")


def _readme_markdown(markdown: str, heading: str) -> str:
    """Level-2 headings (report sections) at `heading`'s level; plots linked to the README's copies."""
    markdown = re.sub(r"^## ", heading + " ", markdown, flags=re.M)
    return re.sub(r"!\[([^\]]*)\]\(([^)/]+\.png)\)", lambda m: f"![{m[1]}](docs/demo/{m[2]})", markdown)
