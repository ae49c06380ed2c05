"""Stages: one description each (catalog) and their file-level runners (runners), which the CLI
and the Prefect flow both call."""

from tops.stages.catalog import STAGES, TRAIN_METHODS, Stage, TrainMethod, record_name, stage
from tops.stages.runners import (
    EVAL_SEED_OFFSET,
    draw_problems,
    merge_shards,
    one_writer,
    record_stage,
    run_eval,
    run_generate,
    run_light,
    run_mask,
    run_pairs,
    run_problems,
    run_seed,
    run_select,
    run_train,
    run_verify,
    take_shard,
)

__all__ = [
    "EVAL_SEED_OFFSET", "STAGES", "TRAIN_METHODS", "Stage", "TrainMethod", "draw_problems", "merge_shards",
    "one_writer", "record_stage", "record_name", "run_eval", "run_generate", "run_light", "run_mask", "run_pairs",
    "run_problems", "run_seed", "run_select", "run_train", "run_verify", "stage", "take_shard",
]
