"""The memory estimate against hand computations on Qwen2.5-7B's published shape."""

from __future__ import annotations

import json

import pytest

from tops.config import EngineConfig, TrainConfig
from tops.memory import (
    GIB,
    ModelShape,
    load_shape,
    sampling_estimate,
    train_estimate,
)

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]

# config.json of Qwen/Qwen2.5-7B-Instruct (the fields the estimate reads)
QWEN7B = {"model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
          "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
          "tie_word_embeddings": False, "torch_dtype": "bfloat16", "max_position_embeddings": 32768}
H, INTER, L, KV, V = 3584, 18944, 28, 4 * 128, 152064

# By hand: q and o 3584x3584, k and v 3584x512, gate/up/down 3584x18944, two norms, q/k/v biases;
# embeddings and an untied LM head; the final norm.
PER_LAYER = 2 * H * H + 2 * H * KV + 3 * H * INTER + 2 * H + (H + 2 * KV)
PARAMS = L * PER_LAYER + 2 * V * H + H


@pytest.fixture
def qwen7b(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(QWEN7B))
    return tmp_path


def test_parameter_count_matches_the_hand_count_and_the_published_size(qwen7b):
    shape = load_shape(str(qwen7b))
    assert shape.head_dim == 128 and shape.qkv_bias
    assert shape.params == PARAMS
    assert abs(shape.params / 1e9 - 7.62) < 0.01  # Qwen2.5-7B: 7.62B parameters


def test_full_fine_tune_bf16_on_one_gpu(qwen7b):
    shape = load_shape(str(qwen7b))
    cfg = TrainConfig(model_dtype="bfloat16", bf16=True, batch_size=4, max_length=16384, lora={"enabled": False},
                      gradient_checkpointing=False)
    est = train_estimate(shape, cfg, gpu_bytes=80 * GIB)
    tokens = 4 * 16384
    assert est.parts["weights"] == est.parts["gradients"] == 2 * PARAMS
    assert est.parts["optimizer"] == 4 * PARAMS  # AdamW moments in bf16
    assert est.parts["activations"] == tokens * L * (20 * H + 4 * KV + 8 * INTER)
    assert "logits" not in est.parts  # TRL's chunked LM head on a GPU
    # the claim: 7B at max_length 16384, batch 4, cannot fit
    assert est.verdict == "will not fit" and "will not fit" in est.warning
    assert est.total / GIB > 400


def test_zero3_shards_weights_gradients_and_optimizer(qwen7b):
    shape = load_shape(str(qwen7b))
    cfg = TrainConfig(bf16=True, batch_size=1, max_length=16384, gradient_checkpointing=True, num_processes=8,
                      accelerate_config=REPO / "configs" / "accelerate" / "zero3.yaml", lora={"enabled": False})
    est = train_estimate(shape, cfg, gpu_bytes=80 * GIB)
    assert est.parts["weights"] == est.parts["gradients"] == pytest.approx(2 * PARAMS / 8)
    assert est.parts["optimizer"] == pytest.approx(12 * PARAMS / 8)  # fp32 master + 2 moments
    # checkpointing keeps each layer's input (DeepSpeed's bf16 mode: a bf16 residual stream) plus one
    # layer recomputed
    assert est.parts["activations"] == 16384 * (L * 2 * H + 20 * H + 4 * KV + 8 * INTER)
    plain = train_estimate(shape, cfg.model_copy(update={"num_processes": 1, "accelerate_config": None}))
    assert plain.parts["activations"] == 16384 * (L * 4 * H + 20 * H + 4 * KV + 8 * INTER)  # fp32 weights
    assert "autocast copies" not in est.parts
    assert est.verdict == "fits" and est.warning is None
    assert "8 process(es), sharded" in est.line()


def test_float32_weights_under_autocast_keep_bf16_copies(qwen7b):
    shape = load_shape(str(qwen7b))
    cfg = TrainConfig(bf16=True, model_dtype="float32", lora={"enabled": False})
    est = train_estimate(shape, cfg)
    assert est.parts["weights"] == 4 * PARAMS and est.parts["optimizer"] == 8 * PARAMS
    assert est.parts["autocast copies"] == 2 * PARAMS
    assert est.verdict is None and "of" not in est.line().split(";")[0].split(")")[-1]


def test_lora_trains_only_the_adapter(qwen7b):
    shape = load_shape(str(qwen7b))
    cfg = TrainConfig(model_dtype="bfloat16", lora={"enabled": True, "r": 16})
    est = train_estimate(shape, cfg)
    adapter = L * 16 * ((H + H) + 2 * (H + KV) + (H + H) + 2 * (H + INTER) + (INTER + H))
    assert shape.lora_params(16) == adapter
    assert est.parts["weights"] == 2 * PARAMS + 4 * adapter
    assert est.parts["gradients"] == 4 * adapter and est.parts["optimizer"] == 8 * adapter


def test_dpo_doubles_the_sequences_and_holds_a_reference_on_several_processes(qwen7b):
    shape = load_shape(str(qwen7b))
    cfg = TrainConfig(model_dtype="bfloat16", bf16=True, batch_size=2, max_length=1024, lora={"enabled": False})
    sft, dpo = train_estimate(shape, cfg, "sft"), train_estimate(shape, cfg, "dpo")
    assert dpo.parts["activations"] == 2 * sft.parts["activations"]
    assert "reference model" not in dpo.parts  # one process: log-probs computed before training
    assert dpo.parts["logits"] == 2 * 2 * 1024 * V * 6
    zero3 = cfg.model_copy(update={"num_processes": 8,
                                   "accelerate_config": REPO / "configs" / "accelerate" / "zero3.yaml"})
    assert train_estimate(shape, zero3, "dpo").parts["reference model"] == pytest.approx(2 * PARAMS / 8)


def test_a_token_budget_bounds_the_activations(qwen7b):
    shape = load_shape(str(qwen7b))
    cfg = TrainConfig(bf16=True, batch_size=16, max_length=4096, max_tokens_per_batch=8192,
                      gradient_checkpointing=False, lora={"enabled": False})
    est = train_estimate(shape, cfg)
    assert est.parts["activations"] == 8192 * L * (20 * H + 4 * KV + 8 * INTER)  # not 16 x 4096
    assert "8,192 tokens per micro-batch (the token budget)" in est.line()


def test_unset_settings_resolve_as_training_does(qwen7b):
    shape = load_shape(str(qwen7b))
    long = train_estimate(shape, TrainConfig(max_length=16384, batch_size=1, lora={"enabled": False}))
    assert long.parts["activations"] < 16384 * L * (20 * H + 4 * KV + 8 * INTER) / 5  # checkpointing on
    assert long.parts["weights"] == 4 * PARAMS  # plain AdamW: float32 weights


def test_sampling_weights_split_over_tensor_parallel_and_kv_per_sequence(qwen7b):
    shape = load_shape(str(qwen7b))
    engine = EngineConfig(dtype="bfloat16", max_model_len=16384, tensor_parallel_size=2, gpu_memory_utilization=0.9)
    est = sampling_estimate(shape, engine, gpu_bytes=80 * GIB)
    kv_token = 2 * L * (4 // 2) * 128 * 2  # K and V, 2 of the 4 KV heads per GPU, bf16
    assert est.parts["weights"] == 2 * PARAMS / 2
    assert est.parts["KV cache (1 sequence)"] == 16384 * kv_token
    room = 80 * GIB * 0.9 - est.parts["weights"] - est.parts["runtime"]
    assert f"room for ~{int(room // (16384 * kv_token))} sequences" in est.line()
    assert est.verdict == "fits"
    # KV heads are replicated, not split, past their count
    assert shape.kv_bytes_per_token(2, 8) == 2 * L * 1 * 128 * 2
    tiny_gpu = sampling_estimate(shape, engine.model_copy(update={"tensor_parallel_size": 1}), gpu_bytes=16 * GIB)
    assert tiny_gpu.verdict == "will not fit"


def test_moe_models_are_refused():
    with pytest.raises(ValueError, match="mixture-of-experts"):
        ModelShape.from_config({**QWEN7B, "num_experts": 64})
