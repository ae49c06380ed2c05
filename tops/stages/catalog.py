"""One description per stage: what it reads and writes, the config it depends on, where it runs,
and its command line.

Everything that needs a stage's facts reads them here: the CLI (train methods and their data
kinds), the runners' manifest records (tops/stages/runners.py), the flow's cache keys and child
commands (tops/flow/), and the dry run. A stage's config dict (`Stage.config`) is both its cache
key and the `config` of its manifest record, so the two cannot disagree.

Adding a training method (e.g. GRPO) is one entry in TRAIN_METHODS plus its trainer
`tops.train.train_<method>`; the CLI command `tops train <method>`, the kind check and the
manifest name `train-<method>` follow from it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from tops.config import TopsConfig, config_section

MODEL = "model"  # an input or output that is a model folder, not a Parquet artifact


@dataclass(frozen=True)
class TrainMethod:
    """A training method: the artifact kinds it learns from (the default first) and the option
    that names its data on the command line."""

    name: str
    kinds: tuple[str, ...]
    data_option: str = "--data"
    help: str = ""


TRAIN_METHODS: dict[str, TrainMethod] = {m.name: m for m in (
    TrainMethod("sft", ("masked", "selected", "samples"),
                help="SFT with TRL: loss on assistant tokens minus erroneous-step spans; LoRA merged on save."),
    TrainMethod("dpo", ("pairs",), data_option="--pairs",
                help="DPO with TRL on shortest-correct vs incorrect pairs."),
    TrainMethod("grpo", ("problems",), data_option="--problems",
                help="GRPO with TRL, rewarded by our verifier and LASER's length rewards (`grpo:` section)."),
)}


@dataclass(frozen=True)
class Stage:
    """One stage. `inputs` maps an input's name (numbered names like exclude0 share `exclude`) to
    its artifact kind; `sections` are the config sections its output depends on; `keyed` adds what
    else of the config does (a narrower slice than a whole section); `heavy` stages run in a child
    process of the flow (`python -m tops.cli <command>`), light ones in the flow's process."""

    name: str
    inputs: dict[str, str]
    output: str
    sections: tuple[str, ...]
    heavy: bool
    command: Callable[..., list[str]] | None = None
    keyed: Callable[[TopsConfig, dict], dict] | None = None
    empty: str | None = None  # the error when the output would have no rows ({} = the first input)
    heavy_when: Callable[[TopsConfig], bool] | None = field(default=None, repr=False)

    def config(self, cfg: TopsConfig, params: dict | None = None) -> dict:
        """The stage's cache key and manifest `config`: its sections, what `keyed` adds, its parameters."""
        params = dict(params or {})
        return {**config_section(cfg, *self.sections), **(self.keyed(cfg, params) if self.keyed else {}), **params}

    def input_kind(self, name: str) -> str:
        return self.inputs[re.sub(r"\d+$", "", name)]

    def runs_heavy(self, cfg: TopsConfig) -> bool:
        return self.heavy_when(cfg) if self.heavy_when else self.heavy


def _problems_key(cfg: TopsConfig, params: dict) -> dict:
    """The held-out split also depends on eval.n_problems and where it is drawn from."""
    if not params.get("heldout"):
        return {}
    key: dict = {"eval_n": cfg.eval.n_problems}
    if cfg.eval.benchmarks or cfg.eval.source:  # tops.benchmarks.held_out_problems draws from these
        key["held_out"] = cfg.eval.model_dump(mode="json", include={"benchmarks", "source"})
    return key


def _eval_key(cfg: TopsConfig, params: dict) -> dict:
    """Only the prompts (and native controls) of the efforts evaluated: adding an effort to the
    config does not rerun the evaluations that do not use it."""
    efforts = cfg.eval.efforts
    key: dict = {"prompts": {e: cfg.efforts.prompts[e] for e in efforts}}
    kwargs = {e: cfg.efforts.template_kwargs[e] for e in efforts if e in cfg.efforts.template_kwargs}
    depth = {e: cfg.generate.depth[e].model_dump(mode="json") for e in efforts if e in cfg.generate.depth}
    if kwargs or depth:  # only when set, so evaluations of earlier runs keep their keys
        key["native"] = {"template_kwargs": kwargs, "depth": depth}
    return key


def _train_key(cfg: TopsConfig, params: dict) -> dict:
    """GRPO also depends on its own section and on the verifier that is its reward."""
    return config_section(cfg, "grpo", "verify") if params.get("method") == "grpo" else {}


def train_command(method: str, data: str, kind: str, base: str) -> list[str]:
    spec = TRAIN_METHODS[method]
    return ["train", method, spec.data_option, str(data), *(["--kind", kind] if len(spec.kinds) > 1 else []),
            "--base", str(base)]


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("problems", {"exclude": "problems"}, "problems", ("problems",), heavy=False, keyed=_problems_key),
    Stage("seed", {"problems": "problems"}, "samples", ("seed", "efforts", "verify"), heavy=True,
          command=lambda problems: ["seed", "--in", str(problems)]),
    Stage("generate", {"problems": "problems", "model": MODEL}, "samples", ("model", "engine", "generate", "efforts"),
          heavy=True, command=lambda problems, model, label: ["generate", "--in", str(problems), "--model", str(model),
                                                              "--label", label, "--quiet"]),
    Stage("verify", {"samples": "samples"}, "verified", ("verify",), heavy=False),
    Stage("select", {"verified": "verified", "seed": "samples"}, "selected", ("select",), heavy=False,
          empty="{}: no problem has a correct response; nothing to select"),
    Stage("pairs", {"verified": "verified"}, "pairs", ("pairs",), heavy=False,
          empty="{}: no problem has both a correct and an incorrect response; no pairs"),
    # rounds-mode masking is light; a judge needs an engine, so judge mode is heavy
    Stage("mask", {"selected": "selected"}, "masked", ("mask",), heavy=False,
          command=lambda selected: ["mask", "--in", str(selected), "--quiet"],
          heavy_when=lambda cfg: cfg.mask.enabled and cfg.mask.mode == "judge"),
    Stage("train", {"data": "any", "base": MODEL}, MODEL, ("train", "efforts"), heavy=True, command=train_command,
          keyed=_train_key),
    Stage("eval", {"problems": "problems", "model": MODEL}, "eval", ("eval", "engine", "verify"), heavy=True,
          keyed=_eval_key, command=lambda model, label, problems: ["eval", "--model", str(model), "--label", label,
                                                                    "--problems", str(problems), "--quiet"]),
    Stage("export", {}, "export", ("export",), heavy=False),
)}


def stage(name: str) -> Stage:
    return STAGES[name]


def record_name(name: str, params: dict | None = None) -> str:
    """The stage's name in manifest records: `train-<method>` for training."""
    return f"train-{params['method']}" if name == "train" and params and "method" in params else name
