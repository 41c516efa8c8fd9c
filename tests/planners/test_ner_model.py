"""NER on real weights: LoRA merge exactness against peft (tiny random Llama, fp32), the shipped
adapter end to end on the embedded SmolLM2 (parallel and AR). The CLI: test_ner_cli.py."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from parafill.backends.engine.weights import ModelNotFound, default_gguf, load, merge_lora
from parafill.backends.local import LocalBackend, LocalConfig
from parafill.planners.ner import ADAPTER, NerConfig, extract
from parafill.planners.ner_data import WNUT_LABELS, Entity

pytestmark = pytest.mark.anyio
# training tweet 1 of wnut16_dev.conll (the adapter trained on it)
TRAIN_TWEET = (
    "@paulwalk It 's the view from where I 'm living for two weeks . Empire State Building = "
    "ESB . Pretty bad storm here last evening ."
)
HELD_OUT = (  # held-out tweet 1301: gold company Engadget, company Sky 3D, person Stephen Fry
    "Engadget : Sky 3D enlists Stephen Fry to explain the technology ahead of its October 1 "
    "launch ( video) : With the of ... http://bit.ly/abRALO"
)


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # faster than two contending threads on a busy 2-core box
    yield
    torch.set_num_threads(n)


def _tiny() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    return LlamaForCausalLM(cfg).float().eval()


@pytest.mark.parametrize("rslora", [False, True])
def test_merged_lora_equals_peft_logits(tmp_path: Path, rslora: bool) -> None:
    peft = pytest.importorskip("peft")
    base = _tiny()
    plain = copy.deepcopy(base)
    cfg = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        init_lora_weights=False,
        use_rslora=rslora,
        target_modules=["q_proj", "v_proj", "o_proj", "gate_proj", "down_proj"],
    )  # fmt: skip  (init_lora_weights=False: B is random too, so the delta is not zero)
    model = peft.get_peft_model(base, cfg).eval()
    model.save_pretrained(str(tmp_path))
    merged = copy.deepcopy(plain)
    assert merge_lora(merged, tmp_path) == 2 * 5
    ids = torch.randint(0, 97, (2, 11))
    with torch.no_grad():
        want = model(input_ids=ids).logits
        got = merged(input_ids=ids).logits
        before = plain(input_ids=ids).logits
    assert (want - before).abs().max() > 1e-3  # the adapter really changes the output
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_bad_adapters_are_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match="needs adapter_config.json"):
        merge_lora(_tiny(), tmp_path)
    peft = pytest.importorskip("peft")
    for hidden, layers, error in [
        (32, 3, r"adapts 'model.layers.2.self_attn.q_proj', not in the model"),
        (48, 2, r"'model.layers.0.self_attn.q_proj': B @ A is \(48, 48\), the weight is"),
    ]:
        shape = LlamaConfig(
            vocab_size=97, hidden_size=hidden, intermediate_size=64, num_hidden_layers=layers,
            num_attention_heads=4, num_key_value_heads=2,
        )  # fmt: skip
        other = LlamaForCausalLM(shape)
        cfg = peft.LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False)
        out = tmp_path / f"a{hidden}"
        peft.get_peft_model(other, cfg).save_pretrained(str(out))
        with pytest.raises(ValueError, match=error):
            merge_lora(_tiny(), out)


@pytest.fixture(scope="module")
async def ner_backend() -> AsyncIterator[LocalBackend]:
    try:
        default_gguf()
    except ModelNotFound as exc:
        pytest.skip(str(exc))
    cfg = LocalConfig(adapter=str(ADAPTER), budget_tokens=8192, rows=16)
    async with LocalBackend.open(cfg) as backend:
        yield backend


@pytest.mark.parametrize("mode", ["parallel", "ar"])
async def test_adapter_recovers_a_training_entity(ner_backend: LocalBackend, mode: str) -> None:
    result = await extract(TRAIN_TWEET, ner_backend, NerConfig(), mode)
    assert Entity("facility", "Empire State Building") in result.entities
    assert all(e.text in TRAIN_TWEET and e.label in WNUT_LABELS for e in result.entities)


async def test_parallel_on_held_out_tweet_returns_verbatim_labelled_spans(
    ner_backend: LocalBackend,
) -> None:
    labels = ("person", "company", "product")
    result = await extract(HELD_OUT, ner_backend, NerConfig(labels=labels, max_mentions=2))
    assert all(e.text in HELD_OUT and e.label in labels for e in result.entities)
    ids = set(result.run.results)
    assert {f"count:{x}" for x in labels} <= ids  # one count node per label
    mentions = [i for i in ids if i.startswith("mention:")]
    assert len(mentions) <= 2 * len(labels)
    # siblings shared forward passes: one at a time, each node needs a prefill + its tokens
    alone = sum(r.tokens + 1 for r in result.run.results.values())
    assert result.forward_passes is not None and result.forward_passes < alone


@pytest.mark.slow
def test_training_script_saves_a_mergeable_adapter(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    data = root.parent / "shared" / "data" / "wnut16_dev.conll"
    if not data.is_file():
        pytest.skip(f"{data} is not here")
    script = root / "scripts" / "train_ner_lora.py"
    args = ["--data", str(data), "--out", str(tmp_path), "--steps", "2", "--batch", "2"]
    args += ["--zero-frac", "0", "--ar-frac", "0", "--layers", "2", "--threads", "1"]
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    log = json.loads((tmp_path / "training_log.json").read_text())
    assert log["steps"] == 2 and log["log"][0]["loss"] > 0
    hf, _ = load(None)
    assert merge_lora(hf, tmp_path) == 2 * 7  # 7 projections in each of the top 2 layers
