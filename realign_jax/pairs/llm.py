"""An OpenAI-compatible chat endpoint (`POST {base_url}/chat/completions`, stdlib HTTP only)
for the builders' optional LLM steps: Re-Align's masking (pairs/masking.py) and POVID's
hallucination injection (pairs/injection.py), as the papers used GPT-4-class models for them.
Any server that speaks the protocol works (vLLM, llama.cpp, a hosted API)."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclasses.dataclass(frozen=True)
class ChatEndpoint:
    """Where to ask and how; `ask` raises ValueError naming the record on a failed request or
    a reply without a message."""

    base_url: str
    model: str
    api_key: str = ""  # sent as a bearer token when set
    timeout: float = 60.0
    workers: int = 4  # requests in flight at once

    @classmethod
    def from_config(cls, llm: Any, use: str, prefix: str = "pairs.llm.") -> ChatEndpoint:
        """From an `LlmSettings` section (base_url, model, api_key_env, timeout, workers) whose
        keys start with `prefix`; `use` names the setting that asked for it in errors, e.g.
        "pairs.masker='llm'". The key is read from the environment variable `llm.api_key_env` names."""
        if not llm.base_url or not llm.model:
            raise ValueError(f"{use} needs {prefix}base_url and {prefix}model (an OpenAI-compatible "
                             "endpoint such as http://localhost:8000/v1 and its model name)")
        api_key = ""
        if llm.api_key_env:
            api_key = os.environ.get(llm.api_key_env, "")
            if not api_key:
                raise ValueError(f"{prefix}api_key_env={llm.api_key_env!r}: that environment variable is not set")
        if llm.workers < 1:
            raise ValueError(f"{prefix}workers={llm.workers} must be >= 1")
        return cls(llm.base_url, llm.model, api_key, float(llm.timeout), int(llm.workers))

    def ask(self, system: str, user: str, record_id: str, purpose: str) -> str:
        """The reply's text to one system + user turn (temperature 0)."""
        body = {"model": self.model, "temperature": 0.0,
                "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        url = self.base_url.rstrip("/") + "/chat/completions"
        request = urllib.request.Request(url, json.dumps(body).encode("utf-8"), headers, method="POST")
        where = f"record {record_id!r}: {purpose} LLM at {url}"
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                reply = json.loads(response.read().decode("utf-8"))
        except OSError as error:  # URLError, HTTPError and timeouts included
            raise ValueError(f"{where} failed ({error})") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{where} replied with something that is not JSON ({error})") from None
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            content = None
        if isinstance(content, str):
            return content
        raise ValueError(f"{where} replied without choices[0].message.content: {str(reply)[:200]}")

    def map(self, function: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """`function` over `items` with `workers` requests in flight, results in order."""
        with concurrent.futures.ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(function, items))
