"""The model card (README.md) of a pushed model, and the folder pushed with it.

A model on the Hub without a card says nothing of where it came from. The card is built only from
the run folder: huggingface_hub's ModelCardData metadata (base_model, datasets linking the dataset
repo, library_name, tags, the base model's license when known), the method in two sentences, the
training settings, the held-out table (accuracy and tokens per model and effort), the round
history, and how to use it, with the effort system prompts when the model is a tag model.

The folder pushed is `<run>/exports/round<k>-model/`: hard links to the model's files (no copy of
the weights) plus README.md, so what went to the Hub can be read in the run folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from tops import layout
from tops.hub.card import PAPER_BIBTEX, _md_table, _read_json
from tops.models import COMPLETE_MARKER

TAGS = ["tops", "reasoning", "efficient-reasoning", "math", "trl"]
# The packaged default's Hub origin (tops.models.ALIASES folder -> Hub id, license).
KNOWN_BASES = {"SmolLM2-135M-Instruct": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")}
# Not pushed: the completion marker, the trainer's checkpoints and run key.
_LEFT_OUT = (COMPLETE_MARKER, "checkpoints")


def _run_config(run_dir: Path) -> dict:
    try:
        data = yaml.safe_load((run_dir / layout.CONFIG).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def base_model_facts(base: str | None) -> tuple[str | None, str | None]:
    """(Hub id, license) of the run's base model when they can be known without the network: the
    packaged default, a Hub id (license from its cached card), or a local folder whose own card
    names them."""
    if not base:
        return None, None
    from tops.models import ALIASES

    folder = ALIASES.get(base.strip().lower())
    if folder in KNOWN_BASES:
        return KNOWN_BASES[folder]
    if folder is not None:  # the tiny test model: no Hub origin
        return None, None
    local = Path(base)
    if local.is_dir():
        known = KNOWN_BASES.get(local.name)
        card = _card_data(local / "README.md")
        hub_id = card.get("base_model") if isinstance(card.get("base_model"), str) else None
        return (hub_id or (known[0] if known else None),
                card.get("license") if isinstance(card.get("license"), str) else known[1] if known else None)
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(base, "README.md")
    except Exception:  # noqa: BLE001 - not a valid Hub id: no facts
        return None, None
    license = _card_data(Path(cached)).get("license") if isinstance(cached, str) else None
    return base, license if isinstance(license, str) else None


def _card_data(path: Path) -> dict:
    if not path.is_file():
        return {}
    from huggingface_hub import ModelCard

    try:
        return ModelCard.load(path).data.to_dict()
    except Exception:  # noqa: BLE001 - an unreadable card carries no facts
        return {}


def _train_settings(model_dir: Path, config: dict) -> tuple[dict, list[list[Any]]]:
    """(train summary, rows of the settings table)."""
    summary = _read_json(model_dir / layout.TRAIN_SUMMARY)
    stage_config = layout.RunLayout.stage_config(Path(os.path.realpath(model_dir)))
    try:
        stage = yaml.safe_load(stage_config.read_text(encoding="utf-8")) if stage_config.is_file() else None
    except yaml.YAMLError:
        stage = None
    train = ((stage if isinstance(stage, dict) else config).get("train")) or {}
    lora = train.get("lora") or {}
    rows = [
        ["method", (summary.get("kind") or "sft").upper()],
        ["steps", summary.get("steps")], ["epochs", summary.get("epochs")],
        ["learning rate", train.get("learning_rate")],
        ["batch (examples x accumulation)", f"{train.get('batch_size')} x {train.get('grad_accum')}"
         if train.get("batch_size") else None],
        ["max length (tokens)", train.get("max_length")],
        ["LoRA", f"r={lora.get('r')}, alpha={lora.get('alpha')} (merged)" if summary.get("lora") else "no (full)"],
        ["examples", summary.get("examples")], ["trained tokens", summary.get("trained_tokens")],
        ["final loss", summary.get("final_loss")], ["system prompt", summary.get("system_prompt")],
    ]
    return summary, [[k, f"{v:g}" if isinstance(v, float) else v] for k, v in rows if v is not None]


def heldout_table(evals: pd.DataFrame) -> str:
    rows = []
    for (model, effort), part in evals.groupby(["model", "effort"], sort=False):
        rows.append([f"`{model}`", f"`{effort}`", int(part["problem_id"].nunique()),
                     float(part["correct"].mean()), f"{part['n_tokens'].mean():.1f}"])
    return _md_table(["model", "effort", "problems", "accuracy", "mean tokens"], rows)


def model_card(run_dir: str | Path, record, model_dir: str | Path, *, model_repo_id: str,
               dataset_repo_id: str | None = None) -> str:
    """README.md of round `record`'s latest model (`model_dir`), pushed to `model_repo_id`."""
    from huggingface_hub import ModelCard, ModelCardData

    from tops.rounds import history, history_markdown

    run_dir, model_dir = Path(run_dir), Path(model_dir)
    config = _run_config(run_dir)
    base = (config.get("model") or {}).get("base")
    base_id, license = base_model_facts(str(base) if base else None)
    summary, settings = _train_settings(model_dir, config)
    tag_model = summary.get("system_prompt") == "effort"
    data = ModelCardData(
        base_model=base_id, datasets=[dataset_repo_id] if dataset_repo_id else None, library_name="transformers",
        license=license, pipeline_tag="text-generation",
        tags=TAGS + [(summary.get("kind") or "sft").lower()] + (["effort-control"] if tag_model else []),
        model_name=model_repo_id.split("/")[-1])
    name = model_repo_id.split("/")[-1]
    lines = [
        f"# {name}", "",
        f"`{record.model_label}` of the TOPS run `{run_dir.resolve().name}` (round {record.number}), "
        f"fine-tuned from {f'[`{base_id}`](https://huggingface.co/{base_id})' if base_id else f'`{base}`'}.", "",
        "**Method.** TOPS (Thinking-Optimal Scaling, [Yang et al., 2025](https://arxiv.org/abs/2502.18080)) "
        "samples each training problem at several reasoning efforts and keeps, per problem, the shortest "
        "response that reaches the verified answer. Fine-tuning on those responses teaches the model to "
        "spend just as many tokens as a problem needs.", "",
        "## Training", "", _md_table(["setting", "value"], settings), ""]
    if dataset_repo_id:
        lines += [f"Training data, samples and evaluation records: "
                  f"[`{dataset_repo_id}`](https://huggingface.co/datasets/{dataset_repo_id}).", ""]
    evals_path = run_dir / layout.EVAL
    if evals_path.is_file():
        from tops.artifacts import read_artifact

        lines += ["## Held-out evaluation", "",
                  "Accuracy and mean response tokens on held-out problems, per model and reasoning effort "
                  f"(this model is `{record.model_label}`).", "",
                  heldout_table(read_artifact(evals_path, "eval")), ""]
    table = history(run_dir)
    if not table.empty:
        lines += ["## Rounds", "", history_markdown(table), ""]
    lines += _usage(model_repo_id, config, tag_model)
    lines += ["## Citation", "", "```bibtex", PAPER_BIBTEX, "```", ""]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)))


def _usage(repo_id: str, config: dict, tag_model: bool) -> list[str]:
    """A transformers snippet; a tag model's effort system prompts, which it was trained to follow."""
    from tops.config import DEFAULT_EFFORT_PROMPTS

    code = ["```python", "from transformers import pipeline", "",
            f'generator = pipeline("text-generation", model="{repo_id}")', "messages = ["]
    if tag_model:
        code.append('    {"role": "system", "content": LOW_EFFORT_PROMPT},  # an effort prompt from the table below')
    code += ['    {"role": "user", "content": "What is 12 + 7?"},', "]",
             'print(generator(messages, max_new_tokens=512)[0]["generated_text"][-1]["content"])', "```", ""]
    lines = ["## How to use", "", *code]
    if not tag_model:
        return lines + ["No effort prompt is needed: the model chooses how long to reason.", ""]
    prompts = {**DEFAULT_EFFORT_PROMPTS, **((config.get("efforts") or {}).get("prompts") or {})}
    return lines + ["A tag model follows an effort system prompt:", "",
                    _md_table(["effort", "system prompt"], [[f"`{e}`", p] for e, p in prompts.items() if p]), ""]


def stage_model_folder(run_dir: str | Path, number: int, model_dir: str | Path, card: str) -> Path:
    """`<run>/exports/round<k>-model/`: hard links to the model's regular files (a copy where the
    file system cannot link) and README.md, written to a temporary folder and renamed into place."""
    run_dir, model_dir = Path(run_dir), Path(model_dir)
    dest = run_dir / layout.export_model_round(number)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp-"))
    try:
        for root, dirs, files in os.walk(model_dir):  # links are not followed
            rel = Path(root).relative_to(model_dir)
            dirs[:] = [d for d in dirs if not (rel == Path(".") and d in _LEFT_OUT)]
            for name in files:
                src = Path(root) / name
                if (rel == Path(".") and name in (*_LEFT_OUT, "README.md")) or src.is_symlink():
                    continue
                target = tmp / rel / name
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(src, target)
                except OSError:
                    shutil.copy2(src, target)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def latest_round(run_dir: str | Path):
    """The run's latest finished round that recorded a model (UserError when there is none)."""
    from tops.errors import UserError
    from tops.rounds import load_rounds, resolve

    finished = [r for r in load_rounds(run_dir) if r.status == "finished" and r.model]
    if not finished:
        raise UserError(f"--model-repo-id: {run_dir} has no finished round with a model (rounds.json); "
                        "the model of a run made by `tops run` is exported")
    field = f"rounds.json: round {finished[-1].number}: model"
    if not resolve(Path(run_dir), finished[-1].model, field).is_dir():  # inside the run folder: checked first
        raise UserError(f"{field}: {finished[-1].model} is not a model folder")
    return finished[-1]


def export_latest_model(run_dir: str | Path, model_repo_id: str, *, dataset_repo_id: str | None = None,
                        private: bool = True, push: bool = True, hf_api: Any = None,
                        timeout_s: float | None = None) -> tuple[Path, str | None]:
    """`tops export --model-repo-id`: the latest finished round's model with its card, staged in
    `<run>/exports/round<k>-model/` and pushed unless `push` is False. (folder, URL or None)."""
    from tops.errors import UserError
    from tops.hub.collect import check_repo_id
    from tops.hub.upload import _get_token, commit_message, push_folder
    from tops.rounds import resolve

    run_dir = Path(run_dir)
    check_repo_id(model_repo_id)
    record = latest_round(run_dir)
    token = _get_token() if push else None
    if push and not token:
        raise UserError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (or use --local-dir); "
                        "nothing was uploaded")
    model = resolve(run_dir, record.model)
    card = model_card(run_dir, record, model, model_repo_id=model_repo_id, dataset_repo_id=dataset_repo_id)
    folder = stage_model_folder(run_dir, record.number, model, card)
    if not push:
        return folder, None
    limit = {"timeout_s": timeout_s} if timeout_s is not None else {}
    return folder, push_folder(folder, model_repo_id, token=token, private=private, hf_api=hf_api,
                               commit_message=commit_message(record), repo_type="model", **limit)
