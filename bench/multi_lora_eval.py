"""Evaluating several LoRA-trained models: one vLLM engine per merged model (what the flow does),
or ONE engine on the base model serving every adapter (vLLM's enable_lora + LoRARequest)?
(issue 29, lever (b))

The demo's tag, TOPS and random-correct models are LoRA (r=16) on the base model, merged into full
folders after training (tops/train/common.py keeps the adapter beside them); the Iter-SFT model is
LoRA on the merged TOPS model, so it is not one adapter on the base. This bench makes `--adapters`
random LoRA adapters on the base (B non-zero, so every model differs), merges each, and times
whole child processes, engine start included, generating the same prompts for base + adapters:
- merged: one engine process per model (base, then each merged model), one after another;
- multi-LoRA: one engine process on the base with enable_lora, each adapter a LoRARequest.
Rounds alternate the two; generated tokens/s and wall are printed per round (compare within one).

--same-time (for a shared, loaded machine): one engine of each kind at once, each bound to its own
core — the base model alone, and the base with enable_lora serving the base and every adapter —
so both see the same load; the whole-flow figure is then extrapolated from each engine's start
time and generation rate (merged: one start per model; multi-LoRA: one start).

    .venv/bin/python bench/multi_lora_eval.py --model PATH/TO/SmolLM2-135M-Instruct
    .venv/bin/python bench/multi_lora_eval.py --model PATH --same-time --adapter-dir DIR  # DIR: adapters made before
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MARK = "BENCH-REPORT "

def make_adapters(base: str, out: Path, count: int, rank: int) -> list[tuple[Path, Path]]:
    """(adapter folder, merged model folder) per adapter, LoRA on the demo's target modules."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tops.config import TrainConfig

    modules = TrainConfig().lora.target_modules
    tokenizer = AutoTokenizer.from_pretrained(base)
    made = []
    for k in range(count):
        torch.manual_seed(k)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                               LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=modules, task_type="CAUSAL_LM"))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.02)
        adapter, merged = out / f"adapter{k}", out / f"merged{k}"
        model.save_pretrained(adapter)
        plain = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        PeftModel.from_pretrained(plain, adapter).merge_and_unload().save_pretrained(merged)
        tokenizer.save_pretrained(merged)
        made.append((adapter, merged))
    return made


def child(mode: str, base: str, targets: list[str], prompts: int, tokens: int, rank: int) -> None:
    """One engine process: `merged` serves targets[0] alone; `lora` serves the base and every
    target adapter. Prints the start time, generated tokens and generation time as JSON."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    from tops.engines.vllm_engine import cpu_threads_bind

    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", cpu_threads_bind())
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    t0 = time.perf_counter()
    model = targets[0] if mode == "merged" else base
    extra = {"enable_lora": True, "max_lora_rank": rank, "max_loras": len(targets)} if mode == "lora" else {}
    llm = LLM(model=model, tokenizer=base, dtype="bfloat16", seed=0, max_model_len=1024, **extra)
    started = time.perf_counter() - t0
    chats = [[{"role": "user", "content": f"What is {17 + i} + {5 + i % 7} + {3 + i % 5}? Work step by step."}]
             for i in range(prompts)]
    params = SamplingParams(temperature=0.7, max_tokens=tokens, ignore_eos=True, n=1)
    requests = [None] if mode == "merged" else [None, *[LoRARequest(f"a{k}", k + 1, t) for k, t in enumerate(targets)]]
    t1, generated = time.perf_counter(), 0
    for lora in requests:
        outs = llm.chat(chats, params, lora_request=lora, use_tqdm=False)
        generated += sum(len(c.token_ids) for o in outs for c in o.outputs)
    # vLLM writes to stdout too: the report is the line with the marker
    print(MARK + json.dumps({"start_s": started, "gen_s": time.perf_counter() - t1, "tokens": generated}), flush=True)


def run(args: list[str]) -> tuple[float, dict]:
    [(wall, report)] = run_together([(args, {})])
    return wall, report


def run_together(children: list[tuple[list[str], dict[str, str]]]) -> list[tuple[float, dict]]:
    """Child engine processes started at once; (wall seconds, report) of each."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, __file__, "--child", *args], env={**os.environ, **env},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for args, env in children]
    done = []
    for (args, _), proc in zip(children, procs, strict=True):
        out, err = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"child {args[:2]} failed:\n{err[-3000:]}")
        report = [line[len(MARK):] for line in out.splitlines() if line.startswith(MARK)]
        if not report:
            raise SystemExit(f"child {args[:2]} printed no report:\n{out[-2000:]}\n{err[-2000:]}")
        done.append((time.perf_counter() - t0, json.loads(report[-1])))
    return done


def same_time(common: list[str], made: list[tuple[Path, Path]], model: str) -> None:
    """Both kinds of engine at once, one core each; the flow-level figure extrapolated."""
    one_core = {"VLLM_CPU_OMP_THREADS_BIND": "0", "OMP_NUM_THREADS": "1"}
    (_, merged), (_, lora) = run_together([(["merged", *common, model], one_core),
                                           (["lora", *common, *(str(a) for a, _ in made)],
                                            {**one_core, "VLLM_CPU_OMP_THREADS_BIND": "1"})])
    models = len(made) + 1
    per_model = {"merged": merged["gen_s"], "multi-LoRA": lora["gen_s"] / models}
    for name, rep in (("merged (base alone)", merged), (f"multi-LoRA (base + {len(made)} adapters)", lora)):
        print(f"{name}: engine start {rep['start_s']:.1f} s, generation {rep['gen_s']:.1f} s, "
              f"{rep['tokens'] / rep['gen_s']:.1f} generated tokens/s", flush=True)
    flow = {"merged": models * (merged["start_s"] + per_model["merged"]),
            "multi-LoRA": lora["start_s"] + models * per_model["multi-LoRA"]}
    print(f"{models} models, extrapolated: merged {flow['merged']:.0f} s, multi-LoRA {flow['multi-LoRA']:.0f} s, "
          f"merged / multi-LoRA = {flow['merged'] / flow['multi-LoRA']:.2f}x; multi-LoRA generation rate "
          f"{per_model['merged'] / per_model['multi-LoRA']:.2f}x the merged engine's "
          f"(load average {os.getloadavg()[0]:.1f})")


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        mode, base, prompts, tokens, rank, *targets = sys.argv[2:]
        return child(mode, base, targets, int(prompts), int(tokens), int(rank))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--adapters", type=int, default=3, help="LoRA models besides the base (demo: tag, TOPS, random)")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--same-time", action="store_true", help="one engine of each kind at once, a core each")
    parser.add_argument("--adapter-dir", type=Path, default=None, help="reuse adapter<k>/merged<k> made by a run before")
    args = parser.parse_args()
    if args.adapter_dir:
        made = [(args.adapter_dir / f"adapter{k}", args.adapter_dir / f"merged{k}") for k in range(args.adapters)]
    else:
        made = make_adapters(args.model, Path(tempfile.mkdtemp(prefix="multi-lora-")), args.adapters, args.rank)
    common = [args.model, str(args.prompts), str(args.tokens), str(args.rank)]
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; base + {args.adapters} LoRA models, "
          f"{args.prompts} prompts x {args.tokens} tokens each")
    if args.same_time:
        return same_time(common, made, args.model)
    for r in range(args.rounds):
        order = ["merged", "multi-LoRA"] if r % 2 == 0 else ["multi-LoRA", "merged"]
        walls = {}
        for name in order:
            if name == "merged":
                wall, starts, gen, tokens = 0.0, 0.0, 0.0, 0
                for target in [args.model, *(str(m) for _, m in made)]:
                    w, rep = run(["merged", *common, target])
                    wall, starts, gen, tokens = wall + w, starts + rep["start_s"], gen + rep["gen_s"], tokens + rep["tokens"]
            else:
                wall, rep = run(["lora", *common, *(str(a) for a, _ in made)])
                starts, gen, tokens = rep["start_s"], rep["gen_s"], rep["tokens"]
            walls[name] = wall
            print(f"round {r + 1} {name}: wall {wall:.1f} s (engine starts {starts:.1f} s, generation {gen:.1f} s, "
                  f"{tokens / gen:.0f} generated tokens/s)", flush=True)
        print(f"round {r + 1}: merged / multi-LoRA wall = {walls['merged'] / walls['multi-LoRA']:.2f}x "
              f"(load average {os.getloadavg()[0]:.1f})", flush=True)


if __name__ == "__main__":
    main()
