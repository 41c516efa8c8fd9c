"""Train the PaDeLLM-NER LoRA adapter for SmolLM2-135M-Instruct on the WNUT-16 training split.

Examples in the planner's own prompt format (parafill/planners/ner_prompts.py): (tweet, label)
-> mention count, (tweet, label, k) -> k-th mention, and (tweet, all labels) -> every entity
(the AR baseline's format, so the baseline gets the same adapter). Only the first 1,295 tweets
of wnut16_dev.conll are used; the last 500 are held out. LoRA sits on the top `--layers`
decoder layers only, so backward stops there (CPU time). Saved as fp16 safetensors in peft's
layout; parafill merges it into the weights at load time (LocalConfig(adapter=...)).

    python scripts/train_ner_lora.py --out parafill/adapters/ner-smollm2
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from parafill.planners import ner_prompts as P
from parafill.planners.ner_data import WNUT_LABELS, Tweet, read_conll, split

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def examples(
    tweets: list[Tweet], rng: random.Random, zero_frac: float, ar_frac: float
) -> list[tuple[str, str]]:
    """(user prompt, answer) pairs: every positive count, a fraction of the zero counts,
    every mention, and the AR list for a fraction of the tweets."""
    pos, zero, mentions, ar = [], [], [], []
    for t in tweets:
        for label in WNUT_LABELS:
            found = t.mentions(label)
            (pos if found else zero).append((P.count_prompt(t.text, label), str(len(found))))
            for k, m in enumerate(found, 1):
                mentions.append((P.mention_prompt(t.text, label, k, len(found)), m))
        ar.append((P.ar_prompt(t.text, WNUT_LABELS), P.ar_answer(t.entities)))
    zeros = rng.sample(zero, round(len(zero) * zero_frac))
    pool = pos + zeros + mentions + rng.sample(ar, round(len(ar) * ar_frac))
    rng.shuffle(pool)
    return pool


def encode(tok: Any, prompt: str, answer: str) -> tuple[list[int], int]:
    """Token ids exactly as the local backend builds the prompt, then the answer and the chat
    template's own end-of-turn tokens; returns (ids, index where the answer starts). The end
    token comes from the template, not `eos_token` (a GGUF-loaded tokenizer may name another)."""
    msgs = [{"role": "system", "content": P.SYSTEM}, {"role": "user", "content": prompt}]
    ids = _ids(tok.apply_chat_template(msgs, add_generation_prompt=True))
    full = _ids(tok.apply_chat_template([*msgs, {"role": "assistant", "content": answer}]))
    if full[: len(ids)] != ids:
        raise ValueError("the chat template does not extend the prompt with the answer")
    return full, len(ids)


def _ids(out: Any) -> list[int]:
    return [int(i) for i in (out if isinstance(out, list) else out["input_ids"])]


def batch_loss(
    model: Any, batch: list[tuple[list[int], int]], pad: int, device: torch.device
) -> torch.Tensor:
    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (seq, _) in enumerate(batch):
        ids[i, : len(seq)], mask[i, : len(seq)] = torch.tensor(seq), 1
    ids, mask = ids.to(device), mask.to(device)
    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, d)
    rows, cols, targets = [], [], []
    for i, (seq, start) in enumerate(batch):
        for j in range(start, len(seq)):  # position j-1 predicts token j
            rows.append(i)
            cols.append(j - 1)
            targets.append(seq[j])
    logits = model.lm_head(hidden[rows, cols])  # (answer tokens, vocab): skip the prompt's
    return F.cross_entropy(logits.float(), torch.tensor(targets, device=device))


def train(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    torch.set_num_threads(args.threads)
    hf, tok = _base(args.base, args.device)
    model, cfg = _lora(hf, args)
    base = model.get_base_model()
    train_tweets, _ = split(read_conll(args.data))
    pairs = examples(train_tweets, rng, args.zero_frac, args.ar_frac)
    pool = [encode(tok, p, a) for p, a in pairs]
    batches = _batches(pool, args.batch, rng)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    total = args.steps or args.epochs * len(batches)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, total))
    log: list[dict[str, float]] = []
    t0, step = time.perf_counter(), 0
    while step < total and time.perf_counter() - t0 < args.max_minutes * 60:
        if step and step % len(batches) == 0:
            rng.shuffle(batches)  # a new epoch
        loss = batch_loss(base, batches[step % len(batches)], pad, hf.device)
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        step += 1
        if step % 10 == 0 or step == 1:
            secs = time.perf_counter() - t0
            log.append({"step": step, "loss": round(loss.item(), 4), "seconds": round(secs, 1)})
            print(json.dumps(log[-1]), flush=True)  # noqa: T201 -- progress
    save(model, cfg, args, Path(args.out))
    meta = {"steps": step, "examples": len(pool), "seconds": time.perf_counter() - t0, "log": log}
    (Path(args.out) / "training_log.json").write_text(json.dumps({**vars(args), **meta}, indent=1))
    return meta


def _lora(hf: Any, args: argparse.Namespace) -> tuple[Any, LoraConfig]:
    """LoRA on every TARGETS projection of the top `args.layers` decoder layers."""
    hf.train(True)
    n_layers = hf.config.num_hidden_layers
    cfg = LoraConfig(
        r=args.rank,
        lora_alpha=args.alpha,
        lora_dropout=0.05,
        target_modules=TARGETS,
        layers_to_transform=list(range(n_layers - args.layers, n_layers)),
    )
    return get_peft_model(hf, cfg), cfg


def _base(path: str | None, device: str) -> tuple[Any, Any]:
    """The embedded SmolLM2 (parafill's loader), or a model directory / .gguf given by path
    (plain transformers: the script then runs without parafill's runtime dependencies)."""
    if path is None:
        from parafill.backends.engine.weights import load

        return load(None, device)
    p = Path(path)
    kw = {"gguf_file": p.name} if p.suffix == ".gguf" else {}
    where = str(p.parent if kw else p)
    tok = AutoTokenizer.from_pretrained(where, local_files_only=True, **kw)
    hf = AutoModelForCausalLM.from_pretrained(
        where, dtype=torch.float32, local_files_only=True, **kw
    )
    return hf.to(device), tok


def _batches(
    pool: list[tuple[list[int], int]], size: int, rng: random.Random
) -> list[list[tuple[list[int], int]]]:
    """Batches of similar lengths (less padding: CPU time), in random order."""
    out = []
    for at in range(0, len(pool), size * 16):
        window = sorted(pool[at : at + size * 16], key=lambda e: len(e[0]))
        out += [window[i : i + size] for i in range(0, len(window), size)]
    rng.shuffle(out)
    return out


def _lr_factor(step: int, total: int) -> float:
    warm = max(1, total // 20)
    return min(1.0, (step + 1) / warm) * max(0.05, 1 - step / total)


def save(model: Any, cfg: LoraConfig, args: argparse.Namespace, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    state = get_peft_model_state_dict(model)
    save_file(
        {k: v.detach().to(torch.float16).contiguous() for k, v in state.items()},
        str(out / "adapter_model.safetensors"),
    )
    cfg.save_pretrained(str(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data/wnut16_dev.conll")
    ap.add_argument("--out", default="parafill/adapters/ner-smollm2")
    ap.add_argument("--base", default=None, help="model dir or .gguf (default: embedded)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--steps", type=int, default=0, help="0: epochs x batches")
    ap.add_argument("--zero-frac", type=float, default=1.0, help="zero-count examples kept")
    ap.add_argument("--ar-frac", type=float, default=1.0, help="tweets given an AR example")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=int, default=16)
    ap.add_argument("--layers", type=int, default=30, help="LoRA on the top N layers")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-minutes", type=float, default=20.0, help="stop early, still save")
    meta = train(ap.parse_args())
    print(f"trained {meta['steps']} steps in {meta['seconds'] / 60:.1f} min")  # noqa: T201


if __name__ == "__main__":
    main()
