"""Typed configuration: one pydantic model per stage, all with extra="forbid".

A YAML file from `configs/` plus `--set a.b=value` overrides is validated in full before any
work starts; the first problem becomes one UserError line naming the field (exit code 2).

One module per group of sections: run_model (run, model, engine, sampling), efforts, problems
(sources, benchmarks), stage_sections (generate ... eval, seed), train, grpo, cluster, root (flow,
export, TopsConfig), loading (YAML and overrides), repo_id (Hub ids). Import from `tops.config`.
"""

from tops.config.base import Strict, quoted
from tops.config.efforts import DEFAULT_EFFORT_PROMPTS, EFFORT_ORDER, EffortsConfig
from tops.config.grpo import GrpoConfig
from tops.config.loading import (
    MAX_CONFIG_BYTES,
    config_section,
    format_validation_error,
    load_config,
    parse_overrides,
    parse_yaml,
)
from tops.config.problems import (
    ArithLevel,
    ArithSource,
    BenchmarkConfig,
    ColumnMap,
    FileSource,
    HFSource,
    ProblemsConfig,
    SourceConfig,
)
from tops.config.root import TRAIN_STAGES, ExportConfig, FlowConfig, TopsConfig, flow_problem_counts
from tops.config.run_model import EngineConfig, ModelConfig, RunConfig, SamplingConfig
from tops.config.stage_sections import (
    AlphaOneConfig,
    BudgetForcingConfig,
    DepthControlConfig,
    EvalConfig,
    GenerateConfig,
    LaserConfig,
    MaskConfig,
    PairsConfig,
    SeedConfig,
    SelectConfig,
    VerifyConfig,
)
from tops.config.train import LoraConfig, TrainConfig

__all__ = [
    "DEFAULT_EFFORT_PROMPTS", "EFFORT_ORDER", "MAX_CONFIG_BYTES", "TRAIN_STAGES", "AlphaOneConfig", "ArithLevel",
    "ArithSource", "BenchmarkConfig", "BudgetForcingConfig", "ColumnMap", "DepthControlConfig", "EffortsConfig",
    "EngineConfig", "EvalConfig", "ExportConfig", "FileSource", "FlowConfig", "GenerateConfig", "GrpoConfig", "HFSource",
    "LaserConfig", "LoraConfig", "MaskConfig", "ModelConfig", "PairsConfig", "ProblemsConfig", "RunConfig",
    "SamplingConfig", "SeedConfig", "SelectConfig", "SourceConfig", "Strict", "TopsConfig", "TrainConfig",
    "VerifyConfig", "config_section", "flow_problem_counts", "format_validation_error", "load_config",
    "parse_overrides", "parse_yaml", "quoted",
]
