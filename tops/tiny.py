"""A tiny randomly initialised chat model built on the spot, for tests and the `smoke` profile.

Real engines (vLLM on CPU, transformers, TRL) load it like any Hugging Face model folder, so
tests exercise the real code paths in seconds. vLLM on CPU rejects head_dim 16, hence
hidden 128 with 2 heads (head_dim 64).
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

from tops.artifacts import publish_folder

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Reasoning-model template shapes, on the same tokens (tests of tops.train.examples / thinking):
# QwQ / DeepSeek-R1 distills drop the thinking from assistant messages and open it in the
# generation prompt; Qwen3 re-renders the block of the last turn and closes it empty in the
# generation prompt when enable_thinking is false.
R1_STYLE_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{% set content = message['content'].split('</think>')[-1].lstrip() %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + content + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n<think>\n' }}{% endif %}"
)
QWEN3_STYLE_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{% set content = message['content'] %}{% set reasoning = '' %}"
    "{% if '</think>' in content %}"
    "{% set reasoning = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}"
    "{% set content = content.split('</think>')[-1].lstrip('\n') %}{% endif %}"
    "{% if loop.last %}{{ '<|im_start|>assistant\n<think>\n' + reasoning.strip('\n') + '\n</think>\n\n'"
    " + content + '<|im_end|>\n' }}"
    "{% else %}{{ '<|im_start|>assistant\n' + content + '<|im_end|>\n' }}{% endif %}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\n\n</think>\n\n' }}{% endif %}"
    "{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
COMPLETE_MARKER = ".tops-complete"


def _corpus(n_lines: int = 3000, seed: int = 0) -> list[str]:
    """Text like what the model will see: arithmetic, working, effort prompts, boxed answers."""
    from tops.domains.arith import evaluate

    rng = random.Random(seed)
    words = ("What is the answer Let think step by step carry column digit sum check "
             "so therefore Wait verify subtract add plus minus equals Final Answer boxed "
             "You are a helpful assistant Solve time is limited reasoning effort low medium "
             "high unlimited careful").split()
    lines = []
    for _ in range(n_lines):
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        op = rng.choice(["+", "-", "*"])
        result = evaluate([a, b], [op])
        lines.append(f"What is {a} {op} {b}? {a} {op} {b} = {result}. "
                     f"The answer is \\boxed{{{result}}}.")
        lines.append(" ".join(rng.choice(words) for _ in range(12)))
    return lines


def build_tiny_model(out_dir: str | Path, vocab_size: int = 512, seed: int = 0,
                     chat_template: str = CHATML_TEMPLATE) -> Path:
    """Create (or reuse) a tiny Qwen2 model + trained BPE tokenizer with a chat template."""
    out_dir = Path(out_dir)
    if (out_dir / COMPLETE_MARKER).exists():
        return out_dir
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(seed=seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
    )
    fast.chat_template = chat_template
    if "<think>" in chat_template:  # as in real reasoning models: one (non-special) token each, which
        fast.add_tokens(["<think>", "</think>"])  # a server's reasoning parser looks up

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(fast),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        eos_token_id=fast.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=fast.convert_tokens_to_ids("<|endoftext|>"),
        bos_token_id=None,
        dtype="float32",
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    model.save_pretrained(tmp, safe_serialization=True)
    fast.save_pretrained(tmp)
    (tmp / COMPLETE_MARKER).write_text("tiny\n")
    return publish_folder(tmp, out_dir, COMPLETE_MARKER)

