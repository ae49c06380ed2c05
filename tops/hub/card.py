"""The dataset card (README.md): YAML metadata the Hub and `load_dataset` read, and a description
of how the data was made, built only from the run folder (artifacts, manifests, config, rounds)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from tops import layout
from tops.hub.collect import INTERNAL_DIRS, ExportPlan, split_order

DEFAULT_LICENSE = "apache-2.0"
TASK_CATEGORIES = ["text-generation"]
TAGS = ["reasoning", "math", "tops", "efficient-reasoning"]

PAPER_BIBTEX = """\
@inproceedings{yang2025thinkingoptimal,
  title         = {Towards Thinking-Optimal Scaling of Test-Time Compute for LLM Reasoning},
  author        = {Yang, Wenkai and Ma, Shuming and Lin, Yankai and Wei, Furu},
  booktitle     = {Advances in Neural Information Processing Systems (NeurIPS)},
  year          = {2025},
  eprint        = {2502.18080},
  archivePrefix = {arXiv},
  url           = {https://arxiv.org/abs/2502.18080}
}"""

_SIZE_CATEGORIES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                    (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"),
                    (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]
_POLICY_TEXT = {
    "shortest": "the shortest correct response per problem over all efforts (TOPS' thinking-optimal choice)",
    "random": "a random correct response per problem (the paper's baseline)",
    "laser-d": "a difficulty-aware length budget per problem (LASER-D style)",
    "seed-low": "low-effort responses of the seed set, appended as is",
}
_URL_USERINFO = re.compile(r"(?<=://)[^/\s:@]+:[^/\s@]+@")


def size_category(rows: int) -> str:
    for bound, label in _SIZE_CATEGORIES:
        if rows < bound:
            return label
    return "n>1B"



# ---------------------------------------------------------------- dataset card


def _scrub(text: str, secrets: Iterable[str]) -> str:
    text = _URL_USERINFO.sub("***@", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _md_table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):  # shares and accuracies; token means come as text
            value = f"{value:.3f}"
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _frame(ds: Any, columns: list[str]):
    present = [c for c in columns if c in ds.column_names]
    return ds.data.table.select(present).to_pandas()


def _manifests(plan: ExportPlan) -> dict[str, dict]:
    """folder inside the run ("" for the top) -> its manifest's stage records.

    Stage commands write `manifest.json` beside their output (the run folder, an iteration's
    folder); the Prefect flow writes its stages into `stages/` and publishes stable names, listed
    in `lineage.json`: of `stages/manifest.json` only the records of published outputs are kept.
    """
    parents = {PurePosixPath(a.rel).parent for splits in plan.configs.values() for a in splits.values()}
    folders = sorted({""} | {p.as_posix() for p in parents if p != PurePosixPath(".")}, key=split_order)
    out = {}
    for folder in [*folders, *INTERNAL_DIRS]:
        stages = _read_json(plan.run_dir / folder / layout.MANIFEST).get("stages")
        if not isinstance(stages, dict):
            continue
        if folder in INTERNAL_DIRS:
            lineage = _read_json(plan.run_dir / layout.LINEAGE)
            published = {PurePosixPath(str(v)).name for v in lineage.values()}
            if published:
                stages = {k: v for k, v in stages.items()
                          if isinstance(v, dict) and v.get("output") in published}
        if stages:
            out[folder] = stages
    return out


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _stage_records(manifests: dict[str, dict], stage: str) -> list[dict]:
    return [entry for stages in manifests.values() for entry in stages.values()
            if isinstance(entry, dict) and entry.get("stage") == stage]


def _record_for(manifests: dict[str, dict], stage: str, outputs: set[str]) -> dict | None:
    """The stage's record of one of `outputs` if there is one, else its first record."""
    records = sorted(_stage_records(manifests, stage), key=lambda e: e.get("output") not in outputs)
    return records[0] if records else None


def _mean(series) -> str:
    return f"{float(series.mean()):.1f}" if len(series) else "-"


def _token_stats(series) -> list[Any]:
    return [_mean(series), int(series.median()), int(series.min()), int(series.max())]


def _section_samples(dd: Any) -> list[str]:
    rows = []
    for split, ds in dd.items():
        df = _frame(ds, ["effort", "n_tokens", "correct", "finish_reason"])
        for effort, part in df.groupby("effort", sort=False):
            acc = float(part["correct"].mean()) if "correct" in part and part["correct"].notna().any() else "-"
            trunc = float((part["finish_reason"] == "length").mean()) if "finish_reason" in part else "-"
            rows.append([split, effort, len(part), *_token_stats(part["n_tokens"]), acc, trunc])
    return ["### Responses by effort (`samples`)", "",
            _md_table(["split", "effort", "rows", "mean tokens", "median", "min", "max",
                       "accuracy", "truncated share"], rows), ""]


def _section_sft(dd: Any, masked: bool, manifests: dict[str, dict], outputs: set[str]) -> list[str]:
    """`outputs`: file names of the `train` split's artifact (published and cached name)."""
    rows, policies = [], {}
    for split, ds in dd.items():
        df = _frame(ds, ["effort", "n_tokens", "policy", "masked_chars"])
        for policy, count in df["policy"].value_counts().items():
            policies[policy] = policies.get(policy, 0) + int(count)
        for effort, part in df.groupby("effort", sort=False):
            share = float((part["masked_chars"].fillna(0) > 0).mean()) if "masked_chars" in part else "-"
            rows.append([split, effort, len(part), *_token_stats(part["n_tokens"]), share])
    lines = ["### Selection (`sft`)", "",
             "One response per problem that has a correct one; the `policy` column names the rule:", ""]
    lines += [f"- `{p}` ({n} rows): {_POLICY_TEXT.get(p, 'see the run configuration')}"
              for p, n in policies.items()]
    # The select record behind the sft rows: the masking stage's input, else the rows themselves.
    mask_entry = _record_for(manifests, "mask", outputs) if masked else None
    selected_path = (((mask_entry or {}).get("inputs") or {}).get("selected") or {}).get("path")
    select_entry = _record_for(manifests, "select", {Path(selected_path).name} if selected_path else outputs)
    if select_entry:
        threshold = ((select_entry.get("config") or {}).get("select") or {}).get("min_effort_accuracy")
        if threshold:
            dropped = (select_entry.get("summary") or {}).get("dropped_unreliable", "?")
            lines += ["", f"Candidates came only from efforts right on at least {threshold:.0%} of their "
                          f"samples of the problem (`select.min_effort_accuracy`), so a lucky guess is not "
                          f"taken for a short answer; {dropped} problems whose only correct responses were "
                          "such guesses were dropped."]
    lines += ["", _md_table(["split", "effort", "rows", "mean tokens", "median", "min", "max",
                             "masked rows share"], rows), "", "### Erroneous-step masking", ""]
    if not masked:
        lines += ["Not applied: the `sft` config holds the selected responses as they are.", ""]
        return lines
    lines += [
        "`steps` lists `[start, end)` character spans that tile `response`, each with an "
        "`erroneous` flag; `masked_chars` counts the flagged characters. TOPS training keeps "
        "the flagged spans (wrong intermediate answers later corrected by a reflection) out of "
        "the loss while training on the rest, including the reflection that fixes them; "
        "`n_rounds` / `n_erroneous_rounds` count reasoning rounds (a round ends with an answer).",
        ""]
    if mask_entry:
        cfg = (mask_entry.get("config") or {}).get("mask", {})
        summary = mask_entry.get("summary") or {}
        facts = {"enabled": cfg.get("enabled", summary.get("enabled")),
                 "mode": cfg.get("mode", summary.get("mode")),
                 "step split": cfg.get("step_split"),
                 "masked rows share": summary.get("masked_rows_share"),
                 "masked token share (estimated)": summary.get("masked_token_share")}
        lines += [f"- {k}: `{v}`" for k, v in facts.items() if v is not None] + [""]
    return lines


def _section_dpo(dd: Any) -> list[str]:
    rows = []
    for split, ds in dd.items():
        df = _frame(ds, ["pair_kind", "chosen_tokens", "rejected_tokens"])
        for kind, part in df.groupby("pair_kind", sort=False):
            rows.append([split, kind, len(part), _mean(part["chosen_tokens"]),
                         _mean(part["rejected_tokens"])])
    return ["### Preference pairs (`dpo`)", "",
            "`chosen` is a short correct response, `rejected` a longer incorrect one of the same "
            "problem (`pair_kind` says which rule built the pair).", "",
            _md_table(["split", "pair kind", "pairs", "mean chosen tokens",
                       "mean rejected tokens"], rows), ""]


def _section_eval(dd: Any) -> list[str]:
    rows = []
    for split, ds in dd.items():
        df = _frame(ds, ["model", "effort", "n_tokens", "correct", "seed"])
        for (model, effort), part in df.groupby(["model", "effort"], sort=False):
            rows.append([split, model, effort, part["seed"].nunique(), len(part),
                         float(part["correct"].mean()), _mean(part["n_tokens"])])
    return ["### Evaluation (`eval`)", "", "One row per model, problem, effort and seed.", "",
            _md_table(["split", "model", "effort", "seeds", "rows", "accuracy", "mean tokens"], rows), ""]


def _models(dicts: dict[str, Any], manifests: dict[str, dict], config: dict) -> dict[str, str]:
    models: dict[str, str] = {}
    base = (config.get("model") or {}).get("base")
    if base:
        models[str(base)] = "base model (`model.base`)"
    teacher = (config.get("seed") or {}).get("teacher")
    if teacher:
        models[str(teacher)] = ("seed data: the arith domain's programmatic teacher"
                                if teacher == "arith" else "seed-data teacher (`seed.teacher`)")
    mask = config.get("mask") or {}
    if mask.get("mode") == "judge":
        models[str(mask.get("judge_model") or base or "the run's model")] = "masking judge"
    for entry in _stage_records(manifests, "generate"):
        base = ((entry.get("config") or {}).get("model") or {}).get("base")
        if base:
            models.setdefault(str(base), "configured model (`model.base`)")
    for config, role in (("samples", "generated the responses"),
                         ("eval", "evaluated (its label in `eval`)")):
        for ds in dicts.get(config, {}).values():
            if "model" in ds.column_names:
                for name in _frame(ds, ["model"])["model"].dropna().unique():
                    models[str(name)] = role
    return models


def _effort_prompts(dicts: dict[str, Any], config: dict) -> dict[str, str]:
    from tops.config import DEFAULT_EFFORT_PROMPTS

    prompts = dict(DEFAULT_EFFORT_PROMPTS)
    prompts.update(((config.get("efforts") or {}).get("prompts")) or {})
    seen: list[str] = []
    for config in ("samples", "sft", "eval"):
        for ds in dicts.get(config, {}).values():
            for effort in _frame(ds, ["effort"])["effort"].dropna().unique():
                if effort not in seen:
                    seen.append(str(effort))
    return {e: prompts.get(e, "(not in the run's configuration)") for e in seen}


def dataset_card(plan: ExportPlan, dicts: dict[str, Any], facts: dict[str, dict], repo_id: str, *,
                 license: str = DEFAULT_LICENSE, redact: Iterable[str] = (), history: str = "",
                 model_repo_id: str | None = None) -> str:
    """README.md: YAML metadata (configs, dataset_info, license, task, tags, size) + description;
    `model_repo_id`: the model trained on it, linked from the introduction."""
    from datasets import DatasetInfo, SplitDict, SplitInfo
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCardData

    redact = [s for s in redact if s]
    run_name = plan.run_dir.resolve().name
    total = sum(f["rows"] for splits in facts.values() for f in splits.values())
    default = "sft" if "sft" in dicts else next(iter(dicts))
    card_data = DatasetCardData(
        license=license, task_categories=TASK_CATEGORIES, tags=TAGS,
        size_categories=[size_category(total)], pretty_name=f"TOPS run {run_name}")
    MetadataConfigs({
        config: {"data_files": [{"split": s, "path": f"data/{config}/{s}-*"} for s in dd],
                 **({"default": True} if config == default else {})}
        for config, dd in dicts.items()}).to_dataset_card_data(card_data)
    infos = DatasetInfosDict()
    for config, dd in dicts.items():
        splits = SplitDict()
        for split in dd:
            splits.add(SplitInfo(name=split, num_bytes=facts[config][split]["num_bytes"],
                                 num_examples=facts[config][split]["rows"]))
        download = sum(f["parquet_bytes"] for f in facts[config].values())
        size = sum(f["num_bytes"] for f in facts[config].values())
        infos[config] = DatasetInfo(config_name=config, features=next(iter(dd.values())).features,
                                    splits=splits, download_size=download, dataset_size=size)
    infos.to_dataset_card_data(card_data)

    manifests = _manifests(plan)
    config_path = plan.run_dir / "config.yaml"
    config_text = config_path.read_text(encoding="utf-8") if config_path.is_file() else None
    if model_repo_id:  # the model repo's card lists this dataset in its metadata; this links back
        history = (f"The model trained on this data: [`{model_repo_id}`](https://huggingface.co/{model_repo_id}).\n\n"
                   + history)
    body = _card_body(plan, dicts, facts, repo_id, default, manifests, config_text, history)
    return f"---\n{card_data.to_yaml()}\n---\n\n{_scrub(body, redact)}"


def _card_body(plan: ExportPlan, dicts: dict[str, Any], facts: dict[str, dict], repo_id: str,
               default: str, manifests: dict[str, dict], config_text: str | None, history: str = "") -> str:
    """`history`: the rounds' section (tops.rounds.history_section), right after the introduction."""
    run_name = plan.run_dir.resolve().name
    lines = [
        f"# TOPS run `{run_name}`", "",
        "Reasoning data made with `tops`, an implementation of **TOPS (Thinking-Optimal "
        "Scaling)** ([Yang et al., 2025](https://arxiv.org/abs/2502.18080)): a model answers each problem at several reasoning "
        "efforts (low, medium, high), the answers are verified against the gold answer, and the "
        "shortest correct response per problem is kept as training data, so the model learns "
        "to spend just as many tokens as a problem needs.", "",
        *([history] if history else []),
        "## Configs and splits", "",
        _md_table(["config", "split", "source file", "rows", "Parquet shards", "Parquet bytes"],
                  [[f"`{c}`", f"`{s}`", f"`{plan.configs[c][s].rel}`", f["rows"], f["shards"],
                    f["parquet_bytes"]] for c, splits in facts.items() for s, f in splits.items()]),
        "",
        "- `samples`: every generated response with its verification (`verified` artifact; the "
        "unverified `samples` artifact only where no verified one exists).",
        "- `sft`: one selected response per problem (`masked` artifact with erroneous-step spans, "
        "else `selected`).",
        "- `dpo`: preference pairs (`pairs` artifact).",
        "- `eval`: per-sample evaluation records (`eval` artifact).", "",
        "Split rule: a split is named after the file's folder inside the run plus whatever follows "
        "the kind in its file name, joined by `_`; the top-level file is `train` (`test` for "
        "`eval`). For example `verified.parquet` -> `train`, `iter1/verified.parquet` -> `iter1`, "
        "`masked_random.parquet` -> `random`, `eval.parquet` -> `test`. Within a config every "
        "split has the same columns (a column missing from one file is null there).", ""]
    if plan.superseded:
        lines += ["Files left out because a preferred kind fills the same split: "
                  + ", ".join(f"`{d.rel}` (superseded by `{k.rel}`)" for d, k in plan.superseded), ""]
    if plan.empty:
        lines += ["Files left out because they have no rows: "
                  + ", ".join(f"`{a.rel}`" for a in plan.empty), ""]
    lines += ["## Loading", "", "```python", "from datasets import load_dataset", ""]
    for config, dd in dicts.items():
        lines.append(f'{config}_data = load_dataset("{repo_id}", "{config}", split="{next(iter(dd))}")')
    lines += ["```", "", f"The default config is `{default}`.", "", "## How the data was made", ""]

    try:
        config = yaml.safe_load(config_text) if config_text else {}
    except yaml.YAMLError:
        config = {}
    config = config if isinstance(config, dict) else {}
    models = _models(dicts, manifests, config)
    if models:
        lines += ["### Models", "", _md_table(["model", "role"], [[f"`{m}`", r] for m, r in models.items()]), ""]
    prompts = _effort_prompts(dicts, config)
    if prompts:
        lines += ["### Reasoning efforts", "",
                  "Each effort is a system prompt that asks for more or less reasoning:", "",
                  _md_table(["effort", "system prompt"], [[f"`{e}`", p] for e, p in prompts.items()]), ""]
    if "samples" in dicts:
        lines += _section_samples(dicts["samples"])
    if "sft" in dicts:
        masked = any(a.kind == "masked" for a in plan.configs["sft"].values())
        main = next(iter(plan.configs["sft"].values()))
        lineage = _read_json(plan.run_dir / layout.LINEAGE)
        outputs = {main.path.name, PurePosixPath(str(lineage.get(main.rel, ""))).name}
        lines += _section_sft(dicts["sft"], masked, manifests, outputs)
    if "dpo" in dicts:
        lines += _section_dpo(dicts["dpo"])
    if "eval" in dicts:
        lines += _section_eval(dicts["eval"])
    lines += ["Token counts (`n_tokens`, `chosen_tokens`, `rejected_tokens`) are counted with the "
              "generating model's tokenizer.", "", "## Columns", ""]
    for config, dd in dicts.items():
        features = next(iter(dd.values())).features
        lines.append(f"- `{config}`: " + ", ".join(f"`{name}`" for name in features))
    lines.append("")

    if manifests:
        stage_rows = [[f"`{folder or '.'}`", f"`{name}`", entry.get("stage", ""), entry.get("rows", ""),
                       entry.get("seconds", ""), entry.get("finished_at", "")]
                      for folder, stages in manifests.items() for name, entry in stages.items()
                      if isinstance(entry, dict)]
        records = {folder or ".": {name: {k: v for k, v in entry.items() if k != "inputs"}
                                   for name, entry in stages.items() if isinstance(entry, dict)}
                   for folder, stages in manifests.items()}
        lines += ["## Pipeline stages", "",
                  _md_table(["folder", "output", "stage", "rows", "seconds", "finished"], stage_rows), "",
                  "<details><summary>Stage records (manifest.json, input paths left out)</summary>", "",
                  "```json", json.dumps(records, indent=2, default=str), "```", "", "</details>", ""]
    lines += ["## Run configuration", ""]
    if config_text:
        lines += ["The run's resolved configuration (`config.yaml`):", "", "```yaml",
                  config_text.rstrip("\n"), "```", ""]
    else:
        lines += ["The run folder holds no `config.yaml`; see the stage records above.", ""]
    lines += ["## License", "",
              "The license in the metadata covers this export. The problems come from the "
              "configured problem source and the responses from the models above: their own "
              "licenses and terms apply too.", "",
              "## Citation", "", "```bibtex", PAPER_BIBTEX, "```", ""]
    return "\n".join(lines)


