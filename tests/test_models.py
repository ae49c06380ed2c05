import json

import pytest

from tops.errors import UserError
from tops.models import is_complete, prepare_default_model, resolve_model


@pytest.mark.slow
def test_embedded_default_converts_once_and_loads(tmp_path, monkeypatch):
    from transformers import AutoConfig, AutoTokenizer

    out = prepare_default_model(tmp_path / "SmolLM2")
    assert is_complete(out)
    config = AutoConfig.from_pretrained(out)
    assert (config.hidden_size, config.num_attention_heads, config.num_hidden_layers) == (576, 9, 30)
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    tok = AutoTokenizer.from_pretrained(out)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>assistant" in text
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert prepare_default_model(out) == out  # second call is a no-op
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp


def test_resolve_local_folder_alias_and_hub_id(tmp_path, tiny_model_dir, monkeypatch):
    assert resolve_model(str(tiny_model_dir)) == str(tiny_model_dir)
    assert resolve_model("Qwen/Qwen2.5-7B-Instruct") == "Qwen/Qwen2.5-7B-Instruct"
    monkeypatch.setenv("TOPS_MODELS_DIR", str(tmp_path / "models"))
    tiny = resolve_model("tiny")
    assert is_complete(tmp_path / "models" / "tiny") and tiny.endswith("tiny")


def test_unknown_model_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="unknown model"):
        resolve_model("no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))
