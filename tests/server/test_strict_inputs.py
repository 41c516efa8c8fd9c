"""Inputs that are not what they claim to be are 400s, never 500s or silent coercions: lone
UTF-16 surrogates in text, non-ASCII digits as logit_bias token ids, booleans where counts go,
empty stop strings."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from conftest import KEY, MODEL, Served

AUTH = {"authorization": f"Bearer {KEY}"}
HI = [{"role": "user", "content": "Say hi."}]
CHAT, TEXT = "/chat/completions", "/completions"

CASES: list[tuple[str, str, dict[str, Any], str, str]] = [
    # id, path, body fields, param (prefix), message part
    ("surrogate in chat", CHAT, {"messages": [{"role": "user", "content": "\ud800"}]},
     "messages.0.content", "not valid Unicode"),
    ("surrogate in a text part", CHAT,
     {"messages": [{"role": "user", "content": [{"type": "text", "text": "a\udfffb"}]}]},
     "messages.0.content", "not valid Unicode"),
    ("surrogate in a prompt", TEXT, {"prompt": "x\ud800"}, "prompt", "not valid Unicode"),
    ("surrogate in a stop", TEXT, {"prompt": "Hi", "stop": ["\ud800"]}, "stop",
     "not valid Unicode"),
    ("superscript digit as token id", CHAT, {"messages": HI, "logit_bias": {"²": 5}},
     "logit_bias", "logit_bias keys are token ids, not '²'"),
    ("Arabic-Indic digits as token id", TEXT, {"prompt": "Hi", "logit_bias": {"١٢": 5}},
     "logit_bias", "logit_bias keys are token ids, not '١٢'"),
    ("max_tokens true", TEXT, {"prompt": "Hi", "max_tokens": True}, "max_tokens",
     "valid integer"),
    ("max_completion_tokens true", CHAT, {"messages": HI, "max_completion_tokens": True},
     "max_completion_tokens", "valid integer"),
    ("n true", CHAT, {"messages": HI, "n": True}, "n", "valid integer"),
    ("seed 1.5", CHAT, {"messages": HI, "seed": 1.5}, "seed", "valid integer"),
    ("token id true", TEXT, {"prompt": [True, 5]}, "prompt", ""),
    ("empty stop", TEXT, {"prompt": "Hi", "stop": ""}, "stop", "at least 1 character"),
    ("empty stop in a list", CHAT, {"messages": HI, "stop": ["end", ""]}, "stop",
     "at least 1 character"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "fields", "param", "says"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_refused_with_a_400(
    served: Served, path: str, fields: dict[str, Any], param: str, says: str
) -> None:
    body = json.dumps({"model": MODEL, "max_tokens": 2, **fields})  # \ud800 as an escape
    headers = {**AUTH, "content-type": "application/json"}
    r = httpx.post(f"{served.url}{path}", content=body, headers=headers, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert err["code"] in ("invalid_value", "unsupported_parameter")
    assert err["param"].startswith(param) and says in err["message"]


def test_plain_values_still_work(served: Served) -> None:
    body = {"model": MODEL, "prompt": [504, 2], "max_tokens": 2, "seed": 3, "n": 1,
            "stop": ["\n\n"], "logit_bias": {"12": 1}, "temperature": 1}  # fmt: skip
    r = httpx.post(f"{served.url}{TEXT}", json=body, headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == 2
