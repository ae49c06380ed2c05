"""Every name in a run folder, in one place.

A flow run writes each stage's output content-addressed under `stages/` (with the resolved config a
child stage ran with beside it), then publishes the current lineage under stable names: the names
`tops compare`, the report and the Hub export read. Nothing else spells these paths.

    <run>/config.yaml            the run's resolved config
    <run>/stages/<stage>-<key>[.parquet]   stage outputs (a model is a folder)
    <run>/stages/<stage>-<key>.yaml        the config a child stage ran with
    <run>/stages/manifest.json   one record per stage output; timings.json: wall time per output
    <run>/problems/<split>.parquet, seed.parquet, samples.parquet, verified.parquet, ...
    <run>/iter<k>/{verified,masked,pairs}.parquet, <run>/models/<label>
    <run>/eval.parquet, report.md (+ its plots), lineage.json (published name -> stage output)
    <run>/rounds.json, rounds/problems.parquet, rounds.png   the campaign's rounds (tops/rounds.py)
    <run>/exports/round<k>/      what round k's export stage pushed (tops/hub/publish.py)
    <run>/exports/round<k>-model/   the model it pushed: hard links + its model card (tops/hub/model_card.py)
    <run>/logs/<stage>/          TensorBoard events of a training stage, logs/eval, logs/rounds (tops/tracking.py)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Model labels: the `model` column of eval rows and the names under models/.
BASE, TAG, TOPS, RANDOM = "base", "tag", "tops", "random"

# Published names (relative to the run folder).
CONFIG = "config.yaml"
LINEAGE = "lineage.json"
REPORT = "report.md"
ACCURACY_PLOT = "accuracy_vs_tokens.png"
SHARES_PLOT = "effort_shares.png"
BUDGET_PLOT = "accuracy_vs_budget.png"  # accuracy within each token budget (tops.evaluate)
EVAL = "eval.parquet"
SEED = "seed.parquet"
SAMPLES = "samples.parquet"
VERIFIED = "verified.parquet"
SELECTED = "selected.parquet"
MASKED = "masked.parquet"
MASKED_RANDOM = "masked_random.parquet"
PAIRS = "pairs.parquet"
RUNS_ROOT = "data/runs"  # where run folders go by default (run.root), and where names are looked up
STAGES = "stages"
CACHE = ".cache"
MANIFEST = "manifest.json"
TIMINGS = "timings.json"
ROUNDS = "rounds.json"
ROUNDS_LEDGER = "rounds/problems.parquet"
ROUNDS_PLOT = "rounds.png"
EXPORTS = "exports"
PROBLEMS_DIR = "problems"
MODELS_DIR = "models"
LOGS = "logs"  # `tensorboard --logdir <run>/logs`
# Everything a run writes at its top level (besides iter<k>/): what tops.confine checks.
TOP_LEVEL = (CONFIG, LINEAGE, REPORT, EVAL, ROUNDS, ROUNDS_LEDGER.split("/")[0], STAGES, CACHE, PROBLEMS_DIR,
             MODELS_DIR, EXPORTS, ACCURACY_PLOT, SHARES_PLOT, BUDGET_PLOT, ROUNDS_PLOT, SEED, SAMPLES, VERIFIED,
             SELECTED, MASKED, MASKED_RANDOM)
# Inside a trained model's folder (tops/train/common.py writes it).
TRAIN_SUMMARY = "train_summary.json"


def default_label(model: str | Path) -> str:
    """A model's label when none is given: its alias, or the name of its folder / Hub id."""
    return Path(str(model)).name


def iteration(k: int) -> str:
    """Label of the model after the k-th self-improvement iteration (and its folder's name)."""
    return f"iter{k}"


def problems(split: str) -> str:
    return f"{PROBLEMS_DIR}/{split}.parquet"


def model(label: str) -> str:
    return f"{MODELS_DIR}/{label}"


def export_round(k: int) -> str:
    return f"{EXPORTS}/round{k}"


def export_model_round(k: int) -> str:
    """What round k pushes to the model repo: the model's files (hard links) and README.md."""
    return f"{EXPORTS}/round{k}-model"


def logs(name: str) -> str:
    """A tracker's folder for one stage (a training output's name, `eval`, `rounds`)."""
    return f"{LOGS}/{name}"


def run_folder_of(output: str | Path) -> Path:
    """The run folder a stage output belongs to: <run> for <run>/stages/<output> (the flow), else
    the output's own folder (a command's --out)."""
    output = Path(output)
    return output.parent.parent if output.parent.name == STAGES else output.parent


def logs_for(output: str | Path) -> Path:
    """A stage output's tracker folder: <run>/logs/<output's name>."""
    return run_folder_of(output) / logs(Path(output).name.removesuffix(".parquet"))


def in_iteration(k: int, artifact: str) -> str:
    """`iter<k>/verified.parquet`, `iter<k>/masked.parquet`, `iter<k>/pairs.parquet`."""
    return f"{iteration(k)}/{artifact}"


def _at(*parts: str, doc: str | None = None) -> property:
    """A fixed path inside the run folder."""
    return property(lambda self: self.dir.joinpath(*parts), doc=doc)


@dataclass(frozen=True)
class RunLayout:
    """Paths of one run folder."""

    dir: Path

    def __post_init__(self):
        object.__setattr__(self, "dir", Path(self.dir))

    stages = _at(STAGES)
    config = _at(CONFIG)
    lineage = _at(LINEAGE)
    report = _at(REPORT)
    eval = _at(EVAL)
    cache = _at(CACHE, doc="Prefect's result records (one per stage key).")
    timings = _at(STAGES, TIMINGS)
    manifest = _at(STAGES, MANIFEST, doc="The flow's stage records (a CLI stage records beside its own output).")

    def stage_output(self, name: str, key: str, folder: bool = False) -> Path:
        return self.stages / (f"{name}-{key}" if folder else f"{name}-{key}.parquet")

    @staticmethod
    def stage_config(output: str | Path) -> Path:
        """The resolved config a child stage ran with, beside its output."""
        output = Path(output)
        return output.with_name(output.name.removesuffix(".parquet") + ".yaml")

    def published(self, name: str) -> Path:
        return self.dir / name

    def model(self, label: str) -> Path:
        return self.dir / model(label)
