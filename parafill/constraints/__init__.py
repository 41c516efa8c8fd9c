"""Grammar-constrained decoding: constraints, compiled once per (constraint, tokenizer), matchers
that fill a token bitmask per step, and applying that bitmask to logits. The engine wiring
(sampling, draft verification) lives in parafill/backends/engine/, not here.

Built on llguidance, not xgrammar, by measurement on the 2-core CPU with the SmolLM2 tokenizer
(benchmarks/results/constraints_cpu.md): compile to the first mask 0.5 vs 4.9-7.9 ms (JSON
schema), 0.7 vs 20-24 ms (grammar), 1.9 vs 28-31 ms (span_of a 600-word page, where xgrammar
has no substring facility and only approximates it); batched mask fill per step equal at width
1 and 8 (0.007 / 0.06 ms), 0.21-0.31 vs 0.38-0.47 ms at 32; rollback 0.4 vs 0.9 us.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from parafill.constraints.bitmask import (
        allocate_bitmask,
        allowed_tokens,
        apply_bitmask,
        bitmask_width,
        fill_batch,
        fill_batch_drafts,
    )
    from parafill.constraints.compiler import Compiled, cache_clear, compile
    from parafill.constraints.matcher import Matcher
    from parafill.constraints.spec import (
        Constraint,
        ConstraintError,
        grammar,
        json_object,
        json_schema,
        regex,
        span_of,
    )
    from parafill.constraints.tokenizer import TokenizerInfo, tokenizer_info

# names load on first use: describing a constraint (spec.py) must not import the grammar
# library or torch (planners build constraints for plans that may run on a remote server)
_WHERE = {
    **dict.fromkeys(
        ["allocate_bitmask", "allowed_tokens", "apply_bitmask", "bitmask_width", "fill_batch",
         "fill_batch_drafts"], "bitmask"),
    **dict.fromkeys(["Compiled", "cache_clear", "compile"], "compiler"),
    "Matcher": "matcher",
    **dict.fromkeys(["Constraint", "ConstraintError", "grammar", "json_object", "json_schema",
                     "regex", "span_of"], "spec"),
    **dict.fromkeys(["TokenizerInfo", "tokenizer_info"], "tokenizer"),
}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'parafill.constraints' has no attribute {name!r}")
    return getattr(import_module(f"parafill.constraints.{_WHERE[name]}"), name)


__all__ = [
    "Compiled",
    "Constraint",
    "ConstraintError",
    "Matcher",
    "TokenizerInfo",
    "allocate_bitmask",
    "allowed_tokens",
    "apply_bitmask",
    "bitmask_width",
    "cache_clear",
    "compile",
    "fill_batch",
    "fill_batch_drafts",
    "grammar",
    "json_object",
    "json_schema",
    "regex",
    "span_of",
    "tokenizer_info",
]
