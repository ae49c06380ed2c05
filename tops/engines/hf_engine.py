"""transformers `generate` engine: the fallback where vLLM is unavailable (and a baseline)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from tops.engines.base import Completion, Request, positions_by_count, samples_per_request
from tops.engines.render import count_tokens, render_chat, render_ids, response_text
from tops.errors import UserError

_DTYPES = {"auto": "auto", "float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


class HFEngine:
    name = "hf"

    def __init__(self, model: str, cfg):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from tops.cpu_dtype import engine_dtype

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            dtype = _DTYPES[engine_dtype(cfg.dtype, on_gpu=torch.cuda.is_available())]
            self.model = AutoModelForCausalLM.from_pretrained(model, dtype=dtype)
        except OSError as exc:
            raise UserError(f"model '{model}': transformers cannot load it ({str(exc).splitlines()[0]})") from exc
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model.to(self.device).eval()
        self.batch_size = cfg.batch_size
        self.max_model_len = cfg.max_model_len or self.model.config.max_position_embeddings
        self.seed = cfg.seed
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id
        self.eos_ids = set(_as_list(self.model.generation_config.eos_token_id)) | {self.tokenizer.eos_token_id}
        self.eos_ids.discard(None)

    def generate(self, requests: list[Request], n: int | Sequence[int], sampling) -> list[list[Completion]]:
        import torch

        torch.manual_seed(self.seed)
        results: list[list[Completion] | None] = [None] * len(requests)
        # generate() takes one num_return_sequences per batch
        for count, positions in positions_by_count(samples_per_request(n, len(requests))).items():
            for start in range(0, len(positions), self.batch_size):
                batch = positions[start:start + self.batch_size]
                for i, samples in zip(batch, self._generate_batch([requests[i] for i in batch], count, sampling),
                                      strict=True):
                    results[i] = samples
        return results

    def _generate_batch(self, batch: list[Request], n: int, sampling) -> list[list[Completion]]:
        import torch

        rows = [render_ids(self.tokenizer, r) for r in batch]
        width = max(len(r) for r in rows)
        max_new = min(sampling.max_tokens, self.max_model_len - width)
        if max_new < 1:
            raise UserError(f"prompt of {width} tokens does not fit max_model_len={self.max_model_len}")
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for i, ids in enumerate(rows):  # left padding keeps every prompt's end aligned
            input_ids[i, width - len(ids):] = torch.tensor(ids)
            attention[i, width - len(ids):] = 1
        greedy = sampling.temperature == 0
        with torch.no_grad():
            out = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention.to(self.device),
                max_new_tokens=max_new,
                do_sample=not greedy,
                temperature=None if greedy else sampling.temperature,
                top_p=None if greedy else sampling.top_p,
                num_return_sequences=n,
                pad_token_id=self.pad_id,
                stop_strings=list(sampling.stop) or None,
                tokenizer=self.tokenizer if sampling.stop else None,
            )
        new_tokens = out[:, width:].tolist()
        grouped: list[list[Completion]] = []
        for i, request in enumerate(batch):
            chat = render_chat(self.tokenizer, request)
            completions = [self._completion(new_tokens[i * n + j], sampling.stop) for j in range(n)]
            grouped.append([replace(c, text=response_text(chat, request, c.text)) for c in completions])
        return grouped

    def _completion(self, tokens: list[int], stop: list[str]) -> Completion:
        kept: list[int] = []
        finish = "length"
        for tok in tokens:
            if tok in self.eos_ids:
                finish = "stop"
                break
            kept.append(tok)
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        # The earliest stop string wins, as in vLLM; transformers keeps it, vLLM drops it.
        hits = [(pos, s) for s in stop if (pos := text.find(s)) >= 0]
        stop_reason = None
        if hits:
            pos, stop_reason = min(hits)
            text, finish = text[:pos], "stop"
            kept = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return Completion(text=text, n_tokens=len(kept), finish_reason=finish, stop_reason=stop_reason)

    def count_tokens(self, texts: list[str]) -> list[int]:
        return count_tokens(self.tokenizer, texts)

    def close(self) -> None:
        self.model = None


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
