"""vLLM OpenAI-server responses carrying routed experts (``.json`` / ``.jsonl``) to traces.

With ``vllm serve ... --enable-return-routed-experts``, every choice of a completion or chat
completion response carries ``routed_experts``: the request's ``[tokens, layers, top_k]`` array as
base64 of ``np.save`` bytes (``numpy2base64(output.routed_experts)`` in
``vllm/entrypoints/openai/completion/serving.py``, ``request_output_to_completion_response``, and
the chat equivalent). The array is the one :mod:`traces.importers.vllm` reads from ``.npy``: every
transformer block on the layer axis, prompt and generated tokens in order, the last sampled token
not forwarded.

Accepted files:

- ``.json``: one response object, or a list of them;
- ``.jsonl``: one per line, either a response object or a line of vLLM's batch output
  (``BatchRequestOutput`` of ``vllm/entrypoints/openai/batch/protocol.py``: ``{"id",
  "custom_id", "response": {"status_code", "request_id", "body": {...response...}}, "error"}``).

Each choice becomes one request (ids 0, 1, ... in file order). Its prompt length comes from the
choice's ``prompt_token_ids`` (``return_token_ids``), else from its generated ``token_ids`` (rows
= prompt + generated - 1), else from ``usage.prompt_tokens`` when the response has a single
choice; rows before it are prefill, the rest decode. Without any of these the phase is unknown and
every row is marked prefill (the provenance counts the choices of each kind). Gate weights are not
returned by vLLM: ``1/k``.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from moe_offload_lab.traces.errors import TraceError
from moe_offload_lab.traces.format import Trace
from moe_offload_lab.traces.importers import _common as c
from moe_offload_lab.traces.spec import ModelSpec


def import_vllm_server(path: Path, spec: ModelSpec, routed: Any) -> Trace:
    """Read vLLM server responses (see the module docstring); ``routed(array, spec, where)``
    checks one decoded array and returns it ``[T, L, k]``."""
    where = str(path)
    arrays, prompts, how = [], [], {"prompt_token_ids": 0, "token_ids": 0, "usage": 0,
                                    "unknown": 0}
    for at, response in _responses(path):
        choices = response.get("choices")
        if not isinstance(choices, list):
            raise TraceError(f"{at}: a response needs a 'choices' list")
        for i, choice in enumerate(choices):
            if not isinstance(choice, dict):
                raise TraceError(f"{at}: choice {i} is not an object")
            ids = routed(_decode(choice.get("routed_experts"), f"{at}: choice {i}"), spec,
                         f"{at}: choice {i}")
            prompt, source = _prompt_length(choice, response, len(choices), ids.shape[0],
                                             f"{at}: choice {i}")
            how[source] += 1
            arrays.append(ids)
            prompts.append(prompt)
    if not arrays:
        raise TraceError(f"{where}: no response with choices")
    lengths = np.array([a.shape[0] for a in arrays], np.int64)
    known = np.array([p if p is not None else n for p, n in zip(prompts, lengths, strict=True)],
                     np.int64)  # unknown prompt length: every row prefill
    request_id, position, phase = c.request_rows(lengths, known)
    ids = c.check_expert_ids(np.concatenate(arrays), spec, where)
    prov = c.provenance(
        "vllm-server-import", __name__, path, spec, choices=len(arrays),
        phase=f"prompt lengths from: {', '.join(f'{k} {v}' for k, v in how.items() if v)}",
        gates="filled in: uniform 1/k (vLLM returns no gate weights)",
        lost=["gate weights", "interleaving of requests (rows are grouped by request)"])
    return c.build_trace(spec, request_id, position, phase, ids, c.uniform_gates(ids.shape),
                         prov, where)


def _responses(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """``(location, response object)`` pairs of a ``.json`` or ``.jsonl`` file."""
    c.require_file(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(f"{path}: cannot read ({c.first_line(exc)})") from None
    if path.suffix.lower() == ".jsonl":
        values = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                values.append((f"{path}:{number}", _parse(line, f"{path}:{number}")))
    else:
        value = _parse(text, str(path))
        items = value if isinstance(value, list) else [value]
        values = [(f"{path} [{i}]" if isinstance(value, list) else str(path), v)
                  for i, v in enumerate(items)]
    return [(at, _unwrap(v, at)) for at, v in values]


def _parse(text: str, at: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise TraceError(f"{at}: malformed JSON ({exc.msg})") from None


def _unwrap(value: Any, at: str) -> dict[str, Any]:
    """A response object, taken out of a batch-output line when it is one."""
    if isinstance(value, dict) and "custom_id" in value and value.get("response") is None:
        raise TraceError(f"{at}: the batch request failed ({str(value.get('error'))[:80]})")
    if isinstance(value, dict) and isinstance(value.get("response"), dict):
        response = value["response"]
        if response.get("status_code", 200) != 200:
            raise TraceError(f"{at}: the batch request failed (status "
                             f"{response.get('status_code')})")
        value = response.get("body")
    if not isinstance(value, dict):
        raise TraceError(f"{at}: expected a completion response object")
    return value


def _decode(payload: Any, at: str) -> np.ndarray:
    if payload is None:
        raise TraceError(f"{at}: routed_experts is missing or null (start vLLM with "
                         f"--enable-return-routed-experts)")
    if not isinstance(payload, str):
        raise TraceError(f"{at}: routed_experts must be a base64 string")
    try:
        raw = base64.b64decode(payload, validate=True)
        array = np.load(io.BytesIO(raw), allow_pickle=False)
    except (binascii.Error, ValueError, OSError, EOFError) as exc:
        raise TraceError(f"{at}: routed_experts is not base64 of np.save bytes "
                         f"({c.first_line(exc)})") from None
    if not isinstance(array, np.ndarray):
        raise TraceError(f"{at}: routed_experts holds an archive, not one array")
    return array


def _prompt_length(choice: dict[str, Any], response: dict[str, Any], n_choices: int, rows: int,
                   at: str) -> tuple[int | None, str]:
    """``(prompt rows or None, where it came from)`` for one choice with ``rows`` rows."""
    prompt_ids = choice.get("prompt_token_ids") or response.get("prompt_token_ids")
    if isinstance(prompt_ids, list) and prompt_ids:
        prompt, source = len(prompt_ids), "prompt_token_ids"
    elif isinstance(choice.get("token_ids"), list) and choice["token_ids"]:
        prompt, source = rows - len(choice["token_ids"]) + 1, "token_ids"
    elif n_choices == 1 and isinstance((response.get("usage") or {}).get("prompt_tokens"), int):
        prompt, source = response["usage"]["prompt_tokens"], "usage"
    else:
        return None, "unknown"
    if not 1 <= prompt <= rows:
        raise TraceError(f"{at}: the prompt has {prompt} tokens by {source}, but routed_experts "
                         f"holds {rows} rows")
    return prompt, source
