"""The whole run: the flow's sizes and rounds, Hub export, and TopsConfig, which checks the
sections against each other."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator

from tops.config.base import MAX_ITERATIONS, MAX_SAMPLES, Strict
from tops.config.cluster import ClusterConfig
from tops.config.efforts import EffortsConfig
from tops.config.grpo import GrpoConfig
from tops.config.problems import ProblemsConfig
from tops.config.run_model import EngineConfig, ModelConfig, RunConfig
from tops.config.stage_sections import (
    EvalConfig,
    GenerateConfig,
    MaskConfig,
    PairsConfig,
    SeedConfig,
    SelectConfig,
    VerifyConfig,
)
from tops.config.train import TrainConfig
from tops.errors import UserError

TRAIN_STAGES = ("tag", "tops", "random", "iter_sft", "iter_dpo", "iter_grpo")


class FlowConfig(Strict):
    seed_problems: int = Field(60, ge=1)
    # The problems the tag model samples at every effort. None: problems.n, the same count a
    # standalone `tops problems` draws (see flow_problem_counts).
    train_problems: int | None = Field(None, ge=1)
    iter_problems: int = Field(60, ge=1)
    iterations: int = Field(1, ge=0, le=MAX_ITERATIONS)
    iter_method: Literal["sft", "dpo", "grpo"] = "sft"  # grpo: LASER rewards (`grpo:` section)
    iter_samples: int = Field(4, ge=1, le=MAX_SAMPLES)  # paper: 8 responses per problem
    random_baseline: bool = True
    # Per-stage training overrides on top of `train` (paper: tag lr 1e-5 x3 epochs, TOPS 1e-5
    # x2, Iter-SFT 1e-6 x1, Iter-DPO 5e-7 x3), keyed by TRAIN_STAGES.
    train_overrides: dict[str, dict[str, Any]] = Field(default_factory=dict)
    runner: Literal["thread", "ray"] = "thread"
    ray_address: str | None = None  # an alias of cluster.address (tops/config/cluster.py)
    generate_shards: int = Field(1, ge=1)  # generation split into this many mapped tasks
    # Evaluations of this many models at once, each on its share of the node (tops.gpus.lane_plans:
    # a subset of the GPU engine groups, or of the CPU cores). 1: one model at a time on all of it.
    # More pays where an engine's start is a large part of an evaluation (small held-out sets).
    concurrent_evals: int = Field(1, ge=1)
    # TOPS and random-correct SFT at once on a CPU host, each on its share of the cores (two
    # 1-thread trainers outrun one 2-thread trainer). GPUs and the Ray runner: one after the other.
    concurrent_trains: int = Field(1, ge=1, le=2)
    gpus_per_shard: float = Field(0, ge=0)
    retries: int = Field(1, ge=0)
    retry_delay_s: float = Field(5, ge=0)
    # True: a run of a folder whose loop already finished is the next round of one campaign
    # (tops/rounds.py): one more self-improvement iteration on problems no earlier round used, from
    # the latest model. False: a rerun reuses every finished stage. Deployments (`tops serve`,
    # prefect.yaml) set it.
    continue_rounds: bool = False

    @field_validator("train_overrides")
    @classmethod
    def _known_stages(cls, overrides: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for stage in overrides:
            if stage not in TRAIN_STAGES:
                raise ValueError(f"unknown training stage '{stage}' (known: {', '.join(TRAIN_STAGES)})")
        return overrides


class ExportConfig(Strict):
    """Publishing as the run's last stage: the datasets (with their card) to a Hub dataset repo, the
    latest model (with its model card) to a model repo. No token here: it comes from HF_TOKEN or
    `hf auth login`."""

    # ORG/NAME of the dataset repo (`repo_id` is its older name, still read); None: no datasets pushed.
    dataset_repo_id: str | None = Field(None, validation_alias=AliasChoices("dataset_repo_id", "repo_id"))
    # ORG/NAME of the model repo; None: no model pushed, unless `model: true` (then the dataset
    # repo's id, as before the two were separate).
    model_repo_id: str | None = None
    private: bool = True  # visibility of a newly created repo (an existing repo keeps its own)
    datasets: bool = True  # samples / sft / dpo / eval configs + dataset card with the rounds' history
    model: bool | None = None  # None: push the model when model_repo_id is set
    license: str = Field("apache-2.0", min_length=1)  # the datasets'; a model card carries its base's
    # Deadline of each Hub request, its upload included (tops/hub/deadline.py): a Hub that does
    # not answer fails the export stage with one line instead of holding the run.
    timeout_s: float = Field(600.0, gt=0, le=86400)

    @field_validator("dataset_repo_id", "model_repo_id")
    @classmethod
    def _hub_repo_id(cls, repo_id: str | None) -> str | None:
        if repo_id is None:
            return None
        from tops.config.repo_id import check_repo_id

        try:
            return check_repo_id(repo_id)
        except UserError as exc:
            raise ValueError(str(exc).removeprefix("--repo-id ")) from None

    @model_validator(mode="after")
    def _pushes_something(self) -> ExportConfig:
        if self.model is False and self.model_repo_id:
            raise ValueError("export.model_repo_id is set but export.model is false")
        if self.model and not self.model_repo:
            raise ValueError("export.model is true but no repo is set (export.model_repo_id)")
        if self.dataset_repo_id and not (self.datasets or self.model_repo):
            raise ValueError("export.dataset_repo_id is set but neither datasets nor model is pushed")
        return self

    @property
    def repo_id(self) -> str | None:
        """Set when the run has an export stage: the dataset repo, else the model repo."""
        return self.dataset_repo if self.dataset_repo else self.model_repo

    @property
    def dataset_repo(self) -> str | None:
        """Where the datasets go (None: they are not pushed)."""
        return self.dataset_repo_id if self.datasets else None

    @property
    def model_repo(self) -> str | None:
        """Where the latest model goes (None: it is not pushed)."""
        if self.model is False:
            return None
        return self.model_repo_id or (self.dataset_repo_id if self.model else None)


class TopsConfig(Strict):
    run: RunConfig = Field(default_factory=RunConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    efforts: EffortsConfig = Field(default_factory=EffortsConfig)
    problems: ProblemsConfig = Field(default_factory=ProblemsConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    verify: VerifyConfig = Field(default_factory=VerifyConfig)
    select: SelectConfig = Field(default_factory=SelectConfig)
    pairs: PairsConfig = Field(default_factory=PairsConfig)
    mask: MaskConfig = Field(default_factory=MaskConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    grpo: GrpoConfig = Field(default_factory=GrpoConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    seed: SeedConfig = Field(default_factory=SeedConfig)
    flow: FlowConfig = Field(default_factory=FlowConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)

    @model_validator(mode="after")
    def _one_cluster_address(self) -> TopsConfig:
        """flow.ray_address is the older name of cluster.address; a Ray address needs the Ray runner."""
        alias = self.flow.ray_address
        if alias:
            if self.cluster.address not in (None, alias):
                raise ValueError(f"flow.ray_address ({alias}) and cluster.address ({self.cluster.address}) "
                                 "disagree; set cluster.address only")
            if self.cluster.address is None:
                self.cluster.address = alias  # validated there
        if self.cluster.address and self.flow.runner != "ray":
            raise ValueError(f"cluster.address is {self.cluster.address} but flow.runner is "
                             f"{self.flow.runner}; set flow.runner: ray to run the stages on the cluster")
        return self

    @model_validator(mode="after")
    def _efforts_known(self) -> TopsConfig:
        known = set(self.efforts.prompts)
        for where, names in (("generate.efforts", self.generate.efforts),
                             ("eval.efforts", self.eval.efforts)):
            for name in names:
                if name not in known:
                    raise ValueError(f"{where}: unknown effort '{name}' (known: {', '.join(sorted(known))})")
        if self.train.system_prompt not in known | {"effort"}:
            raise ValueError(f"train.system_prompt: unknown effort '{self.train.system_prompt}'")
        for where, names in (("generate.depth", self.generate.depth),
                             ("generate.n_samples_by_effort", self.generate.n_samples_by_effort)):
            for name in names:
                if name not in known:
                    raise ValueError(f"{where}: unknown effort '{name}' (known: {', '.join(sorted(known))})")
        efforts = self.efforts
        for name in efforts.template_kwargs:
            if name not in known:
                raise ValueError(f"efforts.template_kwargs: unknown effort '{name}' (known: {', '.join(sorted(known))})")
            if name in ("none", self.train.system_prompt):
                raise ValueError(f"efforts.template_kwargs.{name}: training renders this effort's prompt "
                                 "without template arguments; give it a system prompt instead")
        if efforts.template_kwargs and not efforts.native:
            raise ValueError("efforts.template_kwargs needs efforts.native: true (a tag model learns "
                             "efforts from system prompts only)")
        for stage in self.flow.train_overrides:
            try:
                self.train_config(stage)
            except ValidationError as exc:
                err = exc.errors()[0]
                loc = ".".join(str(p) for p in err["loc"])
                raise ValueError(f"flow.train_overrides.{stage}.{loc}: {err['msg']}") from None
        return self

    def train_config(self, stage: str) -> TrainConfig:
        """`train` with the stage's overrides from flow.train_overrides applied."""
        merged = {**self.train.model_dump(), **self.flow.train_overrides.get(stage, {})}
        return TrainConfig.model_validate(merged)


def flow_problem_counts(cfg: TopsConfig) -> dict[str, int]:
    """Problems the flow draws per split, each exactly (a source with fewer left is an error).
    The training split is flow.train_problems, or problems.n when that is unset; a config that
    sets both to different numbers is refused instead of one silently winning."""
    train = cfg.flow.train_problems
    if train is None:
        train = cfg.problems.n
    elif "n" in cfg.problems.model_fields_set and cfg.problems.n != train:
        raise UserError(f"problems.n ({cfg.problems.n}) and flow.train_problems ({train}) disagree: the flow "
                        "samples flow.train_problems training problems; drop one of them or make them equal")
    counts = {"seed": cfg.flow.seed_problems, "train": train}
    counts.update({f"iter{k}": cfg.flow.iter_problems for k in range(1, cfg.flow.iterations + 1)})
    counts["eval"] = cfg.eval.n_problems
    return counts
