"""vLLM routed-experts arrays (``--enable-return-routed-experts``) to and from traces.

vLLM returns, per finished request, ``CompletionOutput.routed_experts``: a numpy array
``[tokens, layers, top_k]`` of the expert ids every layer's router picked for every token the
request forwarded (prompt and generated tokens in order). The reader accepts:

- ``.npy``: one array ``[T, layers, k]``; request boundaries from a lengths file, else one
  request;
- ``.npz`` with ``routed_experts`` ``[T, layers, k]`` and optionally ``lengths`` [R],
  ``prompt_lengths`` [R], ``request_ids`` [R] (what :func:`export_vllm` writes);
- ``.npz`` of one array per request (``np.savez(f, *[o.routed_experts for o in outputs])``);
  request ids are the trailing digits of the array names (``arr_3`` -> 3) when every name has
  them, else the archive order;
- ``.json`` / ``.jsonl``: OpenAI-server responses whose choices carry ``routed_experts``
  (base64 of ``np.save`` bytes), see :mod:`traces.importers.vllm_server`.

The layer axis may hold the MoE layers only or every transformer block (vLLM sizes it by
``num_hidden_layers`` and leaves zeros in dense blocks); dense blocks are dropped. No gate
weights exist in this format: the importer fills in ``1/k`` and says so in the provenance.
See ``traces/importers/README.md``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from moe_offload_lab.traces.errors import ConfigError, TraceError
from moe_offload_lab.traces.format import Trace
from moe_offload_lab.traces.importers import _common as c
from moe_offload_lab.traces.importers.vllm_server import import_vllm_server
from moe_offload_lab.traces.spec import ModelSpec

_SINGLE = "routed_experts"
_SIDE_ARRAYS = ("lengths", "prompt_lengths", "request_ids")


def import_vllm(path: str | Path, model: str | ModelSpec, *, lengths: str | Path | None = None
                ) -> Trace:
    """Read a vLLM routed-experts ``.npy``/``.npz`` as a trace of ``model``.

    ``lengths`` names a request lengths file (``TOKENS [PROMPT_TOKENS]`` per line); without it
    and without lengths inside the archive, the whole array is one request of prefill tokens.
    """
    path = Path(path)
    spec = c.load_spec(model)
    where = str(path)
    if path.suffix.lower() in (".json", ".jsonl"):
        if lengths is not None:
            raise ConfigError(f"{where}: server responses give their own lengths; drop "
                              f"--lengths")
        return import_vllm_server(path, spec, _routed)
    file_lengths = c.read_lengths(Path(lengths)) if lengths is not None else None
    request_ids = None
    if path.suffix.lower() == ".npz":
        arrays = c.load_npz(path)
        if _SINGLE in arrays:
            stray = sorted(set(arrays) - {_SINGLE, *_SIDE_ARRAYS})
            if stray:
                raise TraceError(f"{where}: unexpected array {stray[0]!r} beside {_SINGLE!r}")
            ids = _routed(arrays[_SINGLE], spec, f"{where}[{_SINGLE}]")  # [T, L, k]
            if "lengths" in arrays:
                if file_lengths is not None:
                    raise ConfigError(f"{where}: the archive has its own lengths; drop --lengths")
                file_lengths = _side_lengths(arrays, ids.shape[0], where)
                if "request_ids" in arrays:
                    request_ids = c.integer_array(arrays["request_ids"].reshape(-1),
                                                  "request_ids", where)
                    if request_ids.shape != file_lengths[0].shape:
                        raise TraceError(f"{where}: request_ids has {request_ids.size} entries, "
                                         f"lengths {file_lengths[0].size}")
        else:
            if not arrays:
                raise TraceError(f"{where}: the archive holds no array")
            parts = [_routed(a, spec, f"{where}[{name}]") for name, a in arrays.items()]
            ids = np.concatenate(parts) if parts else np.empty((0,))
            counts = np.array([p.shape[0] for p in parts], np.int64)
            request_ids = _ids_from_names(list(arrays))
            if file_lengths is None:
                file_lengths = (counts, None)
            elif not np.array_equal(file_lengths[0], counts):
                raise ConfigError(f"{lengths}: the lengths do not match the {len(counts)} "
                                  f"per-request arrays of {where}")
    else:
        ids = _routed(c.load_npy(path), spec, where)
    n_tokens = ids.shape[0]
    if file_lengths is None:
        file_lengths = (np.array([n_tokens], np.int64), None)
    tokens, prompts = file_lengths
    if int(tokens.sum()) != n_tokens:
        raise ConfigError(f"{lengths or where}: the request lengths add up to {int(tokens.sum())} "
                          f"tokens, but {where} holds {n_tokens}")
    request_id, position, phase = c.request_rows(tokens, prompts, request_ids)
    ids = c.check_expert_ids(ids, spec, where)
    prov = c.provenance("vllm-import", __name__, path, spec,
        gates="filled in: uniform 1/k (vLLM records no gate weights)",
        phase="from prompt lengths" if prompts is not None
        else "unknown: every token marked prefill",
        lost=["gate weights", "interleaving of requests (rows are grouped by request)"],
    )
    return c.build_trace(spec, request_id, position, phase, ids, c.uniform_gates(ids.shape),
                         prov, where)


def _routed(array: np.ndarray, spec: ModelSpec, where: str) -> np.ndarray:
    """A routed-experts array [T, layers, k] of any integer dtype -> int64 [T, L, k]."""
    if array.ndim != 3:
        raise TraceError(f"{where}: expected a [tokens, layers, top_k] array, got shape "
                         f"{array.shape}")
    if array.dtype.kind not in "iu":
        raise TraceError(f"{where}: routed experts have dtype {array.dtype}, expected integers "
                         f"(int16 or uint16)")
    if array.shape[2] != spec.top_k:
        raise TraceError(f"{where}: the array holds {array.shape[2]} experts per token, model "
                         f"{spec.name!r} picks top_k={spec.top_k}")
    return c.to_moe_layers(array.astype(np.int64), spec, where)


def _side_lengths(arrays: dict[str, np.ndarray], n_tokens: int, where: str
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    tokens = c.integer_array(arrays["lengths"].reshape(-1), "lengths", where)
    prompts = None
    if "prompt_lengths" in arrays:
        prompts = c.integer_array(arrays["prompt_lengths"].reshape(-1), "prompt_lengths", where)
        if prompts.shape != tokens.shape or (prompts < 0).any() or (prompts > tokens).any():
            raise TraceError(f"{where}: prompt_lengths must give 0..lengths[r] for every request")
    if (tokens < 0).any():
        raise TraceError(f"{where}: lengths must not be negative")
    return tokens, prompts


def _ids_from_names(names: list[str]) -> np.ndarray:
    digits = [re.search(r"(\d+)$", n) for n in names]
    if all(digits):
        ids = np.array([int(d.group(1)) for d in digits], np.int64)
        if len(np.unique(ids)) == len(ids) and ids.max() <= np.iinfo(np.int32).max:
            return ids
    return np.arange(len(names), dtype=np.int64)


def export_vllm(trace: Trace, path: str | Path, *, all_layers: bool = False) -> Path:
    """Write ``trace`` as a vLLM-style ``.npz``: ``routed_experts`` int16 [T, layers, k] with the
    rows grouped by request (requests in order of first appearance), ``lengths``,
    ``prompt_lengths`` and ``request_ids`` [R] int64.

    ``all_layers`` sizes the layer axis by every transformer block, as vLLM does (dense blocks
    hold 0); otherwise it holds the MoE layers only. Gate weights and token positions are not
    written; a request whose phases are not prefill-then-decode is an error.
    """
    path = Path(path)
    if path.suffix.lower() != ".npz":
        raise ConfigError(f"{path}: the vLLM export is an .npz archive; name it *.npz")
    order, requests, lengths = c.grouped_by_request(trace)
    prompts = c.prompt_lengths_of(trace, order, lengths, str(path))
    ids = trace.expert_ids[order]  # [T, L, k]
    spec = trace.spec
    if all_layers:
        full = np.zeros((ids.shape[0], spec.num_layers, spec.top_k), np.int16)  # [T, blocks, k]
        full[:, list(spec.moe_layer_indices)] = ids
        ids = full
    return c.save_npz(path, {_SINGLE: ids.astype(np.int16), "lengths": lengths,
                             "prompt_lengths": prompts, "request_ids": requests})
