"""FLAME-MoE routing traces (Hugging Face dataset ``CMU-FLAME/FLAME-MoE-Traces``) to traces.

The dataset records, for every token of a teacher-forced pretraining pass, the top-6 experts and
their router probabilities at each MoE layer of FLAME-MoE-290M, -721M or -1.7B. Three layouts are
read, all "one file per MoE layer, row ``i`` of every file is the same token":

- ``layerNN.pt`` (the dataset's sample files, and the excerpt in the project's shared data): a
  torch dict with ``samples`` int64 ``[N]`` token ids, ``indices`` int64 ``[N, k]`` expert ids,
  highest score first, ``scores`` float32 ``[N, k]`` and metadata (``model``, ``layer``, ...).
  Loaded with ``torch.load(weights_only=True)`` (:func:`traces.importers._common.load_torch_file`,
  which imports torch only then), so this layout needs torch installed and the others do not.
- ``posPP_layerNN.pt`` (``decoder_first10``): the same fields for position ``PP`` of each of
  several sequences (``token_position`` in the metadata): row ``s`` of every file is sequence
  ``s``, so the trace has one request per sequence, positions ``PP``.
- ``layer_NN.parquet`` (the dataset's current release, ``actives/iter_NNNN/``): columns
  ``indices`` and ``scores`` (lists of k); token ids, when wanted for the end-of-text split, come
  from ``samples/*.parquet`` (column ``token_id``) two folders up, row-aligned.

``NN`` is the 1-based transformer block number (FLAME-MoE-290M: 02..09 for its 8 MoE blocks);
the importer checks that the files are exactly the model's MoE blocks.

**Requests.** The capture records no sequence or request boundaries, only the token stream. Rows
are cut into requests at every end-of-text token (id 0 in the GPT-NeoX tokenizer; the row holding
it ends its request) and into windows of at most ``window`` tokens (default 512). Each request's
first ``prompt_tokens`` rows (default 1) are marked prefill and the rest decode: under causal
attention a token's routing in a teacher-forced pass is the routing that decoding the same text
token by token gives, so replaying the rows as decode steps is faithful (the model never
generated them; the provenance says so). ``lengths`` (a ``TOKENS [PROMPT_TOKENS]`` file, as
``--lengths``) replaces the rule; lines without ``PROMPT_TOKENS`` then get ``prompt_tokens``.

Gates are the router's softmax probabilities over all experts as recorded (not renormalised over
the top-k). Everything that cannot be read, or contradicts the model, raises a one-line
:class:`~traces.errors.TraceError` naming the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from moe_offload_lab.traces.errors import ConfigError, TraceError
from moe_offload_lab.traces.format import DECODE, PREFILL, Trace
from moe_offload_lab.traces.importers import _common as c
from moe_offload_lab.traces.spec import ModelSpec

END_OF_TEXT = 0  # GPT-NeoX / pythia tokenizer
DEFAULT_WINDOW = 512
_STREAM_PT = re.compile(r"^layer(\d+)\.pt$")
_POSITION_PT = re.compile(r"^pos(\d+)_layer(\d+)\.pt$")
_STREAM_PARQUET = re.compile(r"^layer_(\d+)\.parquet$")


@dataclass
class _Layer:
    """One MoE layer's rows: expert ids [N, k], scores [N, k], token ids [N] or None."""

    indices: np.ndarray
    scores: np.ndarray
    samples: np.ndarray | None
    meta: dict[str, Any]


def import_flame(path: str | Path, model: str | ModelSpec | None = None, *,
                 lengths: str | Path | None = None, window: int = DEFAULT_WINDOW,
                 prompt_tokens: int = 1, max_tokens: int | None = None) -> Trace:
    """Read a FLAME-MoE trace folder (any layout above) as a trace.

    ``model`` defaults to the ``model`` named in the files' metadata (``.pt``) or in the folder
    path (``flame-moe-290m``...), which must be a name from ``conf/model``. ``max_tokens`` keeps
    the first rows only (the dataset's files hold 52 million).
    """
    folder = Path(path)
    where = str(folder)
    if not folder.is_dir():
        raise TraceError(f"{where}: not a folder (give the folder holding the per-layer files)")
    if window < 1 or prompt_tokens < 0 or (max_tokens is not None and max_tokens < 1):
        raise ConfigError("window and max_tokens must be at least 1, prompt_tokens at least 0")
    layout, files = _find_files(folder)
    if layout == "position":
        return _import_positions(folder, files, model, max_tokens)
    layers = ({n: _read_pt(p) for n, p in files.items()} if layout == "stream-pt"
              else {n: _read_parquet(p, max_tokens) for n, p in files.items()})
    spec = _spec(model, layers, folder)
    ids, scores = _stack(layers, spec, where, max_tokens)  # [T, L, k] each
    samples = _samples(layers, folder, layout, ids.shape[0], where)
    file_lengths = c.read_lengths(Path(lengths)) if lengths is not None else None
    request_lengths, prompts, rule = _requests(samples, ids.shape[0], file_lengths, window,
                                               prompt_tokens, where)
    request_id, position, phase = c.request_rows(request_lengths, prompts)
    prov = c.provenance("flame-import", "moe_offload_lab.traces.importers.flame", folder, spec,
                        layout=layout, files=sorted(p.name for p in files.values()),
                        metadata=_common_meta(layers), requests=rule,
                        gates="the router's softmax probabilities over all experts, as "
                              "recorded (not renormalised over the top-k)",
                        phase=f"first {prompt_tokens} token(s) of each request prefill, the "
                              "rest decode: a teacher-forced pretraining pass, replayed as "
                              "token-by-token decoding of the same text",
                        dataset={"name": "CMU-FLAME/FLAME-MoE-Traces", "license": "Apache-2.0"},
                        lost=["token ids", "sequence boundaries (not recorded)"])
    return c.build_trace(spec, request_id, position, phase, c.check_expert_ids(ids, spec, where),
                         scores, prov, where)


# ---- finding and reading files ------------------------------------------------------------------
def _find_files(folder: Path) -> tuple[str, dict[int, Path]]:
    """The layout and its files: {block number: path}, or {(position, block): path} flattened
    to {position * 1000 + block} for the per-position layout."""
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    stream = {int(m.group(1)): folder / n for n in names if (m := _STREAM_PT.match(n))}
    parquet = {int(m.group(1)): folder / n for n in names if (m := _STREAM_PARQUET.match(n))}
    position = {int(m.group(1)) * 1000 + int(m.group(2)): folder / n for n in names
                if (m := _POSITION_PT.match(n))}
    found = [(name, files) for name, files in (("stream-pt", stream), ("stream-parquet", parquet),
                                                ("position", position)) if files]
    if not found:
        raise TraceError(f"{folder}: no FLAME routing files (layerNN.pt, layer_NN.parquet or "
                         f"posPP_layerNN.pt)")
    if len(found) > 1:
        raise TraceError(f"{folder}: mixes FLAME layouts ({', '.join(n for n, _ in found)}); "
                         f"keep one per folder")
    return found[0]


def _read_pt(path: Path) -> _Layer:
    data = c.load_torch_file(path, "a FLAME routing file")
    if not isinstance(data, dict):
        raise TraceError(f"{path}: expected a dict with samples, indices and scores, found "
                         f"{type(data).__name__}")
    missing = [k for k in ("indices", "scores") if k not in data]
    if missing:
        raise TraceError(f"{path}: missing field(s) {', '.join(missing)}")
    arrays = {key: c.to_numpy(data[key], key, str(path))
              for key in ("samples", "indices", "scores") if data.get(key) is not None}
    meta = {k: v for k, v in data.items() if isinstance(v, (str, int, float, list))
            and k not in ("samples", "indices", "scores")}
    return _layer(path, arrays.get("indices"), arrays.get("scores"), arrays.get("samples"), meta)


def _read_parquet(path: Path, max_tokens: int | None) -> _Layer:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, columns=["indices", "scores"])
        if max_tokens is not None:
            table = table.slice(0, max_tokens)
        ids = _list_column(table.column("indices"), path, "indices")
        scores = _list_column(table.column("scores"), path, "scores")
    except TraceError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many kinds for a damaged file
        raise TraceError(f"{path}: not a readable FLAME Parquet file with columns indices and "
                         f"scores ({c.first_line(exc)})") from None
    return _layer(path, ids, scores, None, {})


def _list_column(column: Any, path: Path, name: str) -> np.ndarray:
    values = column.combine_chunks()
    if values.null_count:
        raise TraceError(f"{path}: column {name} has null rows")
    flat = values.flatten().to_numpy(zero_copy_only=False)
    rows = len(values)
    if rows == 0 or flat.size % rows:
        raise TraceError(f"{path}: column {name} does not hold the same number of values per row")
    return flat.reshape(rows, flat.size // rows)


def _layer(path: Path, indices: np.ndarray | None, scores: np.ndarray | None,
           samples: np.ndarray | None, meta: dict[str, Any]) -> _Layer:
    if indices is None or indices.ndim != 2 or indices.shape[0] == 0:
        raise TraceError(f"{path}: indices must be a non-empty [tokens, k] array, got shape "
                         f"{None if indices is None else indices.shape}")
    if scores is None or scores.shape != indices.shape:
        raise TraceError(f"{path}: scores must have the shape of indices {indices.shape}, got "
                         f"{None if scores is None else scores.shape}")
    if samples is not None and samples.shape != (indices.shape[0],):
        raise TraceError(f"{path}: samples must hold one token id per row ({indices.shape[0]}), "
                         f"got shape {samples.shape}")
    indices = c.integer_array(indices, "indices", str(path))
    scores = np.asarray(scores, dtype=np.float32)
    if not np.isfinite(scores).all():
        raise TraceError(f"{path}: scores hold a NaN or infinite value")
    return _Layer(indices, scores, samples, meta)


# ---- assembling ---------------------------------------------------------------------------------
def _spec(model: str | ModelSpec | None, layers: dict[int, _Layer], folder: Path) -> ModelSpec:
    if model is not None:
        return c.load_spec(model)
    names = {str(l.meta.get("model")) for l in layers.values() if l.meta.get("model")}
    if len(names) > 1:
        raise TraceError(f"{folder}: the files name different models: {', '.join(sorted(names))}")
    if not names:  # the dataset's folders are named after the model
        names = {p for p in folder.resolve().parts if p.startswith("flame-moe-")}
    from moe_offload_lab.traces.catalog import available

    known = [n for n in sorted(names) if n in available("model")]
    if len(known) != 1:
        raise ConfigError(f"{folder}: cannot tell the model from the files; give --model "
                          f"(e.g. flame-moe-290m)")
    return c.load_spec(known[0])


def _stack(layers: dict[int, Any], spec: ModelSpec, where: str,
           max_tokens: int | None) -> tuple[np.ndarray, np.ndarray]:
    wanted = [b + 1 for b in spec.moe_layer_indices]  # the dataset numbers blocks from 1
    if sorted(layers) != wanted:
        raise TraceError(f"{where}: found layer files {sorted(layers)}, but model {spec.name!r} "
                         f"has MoE blocks {wanted} (1-based)")
    rows = {l.indices.shape[0] for l in layers.values()}
    if len(rows) > 1:
        raise TraceError(f"{where}: the layer files hold different numbers of tokens "
                         f"({', '.join(str(r) for r in sorted(rows))})")
    for block, layer in layers.items():
        if layer.indices.shape[1] != spec.top_k:
            raise TraceError(f"{where}: layer {block:02d} has {layer.indices.shape[1]} experts "
                             f"per token, model {spec.name!r} has top-{spec.top_k}")
        stated = layer.meta.get("layer")
        if stated is not None and stated != block:
            raise TraceError(f"{where}: layer{block:02d}.pt says it holds layer {stated}")
    n = min(rows.pop(), max_tokens or np.iinfo(np.int64).max)
    ids = np.stack([layers[b].indices[:n] for b in wanted], axis=1)  # [T, L, k]
    scores = np.stack([layers[b].scores[:n] for b in wanted], axis=1)  # [T, L, k]
    return ids, scores


def _samples(layers: dict[int, _Layer], folder: Path, layout: str, n: int,
             where: str) -> np.ndarray | None:
    """Token ids [n], checked to agree between the layer files; None when not recorded."""
    given = [l.samples for l in layers.values() if l.samples is not None]
    if given:
        first = given[0][:n]
        if any(not np.array_equal(s[:n], first) for s in given[1:]):
            raise TraceError(f"{where}: the layer files hold different token streams (row i "
                             f"must be the same token in every layer)")
        return first
    if layout == "stream-parquet":
        return _parquet_samples(folder, n)
    return None


def _parquet_samples(folder: Path, n: int) -> np.ndarray | None:
    samples = folder.parent.parent / "samples"
    files = sorted(samples.glob("*.parquet")) if samples.is_dir() else []
    if not files:
        return None
    import pyarrow.parquet as pq

    parts, have = [], 0
    for file in files:
        try:
            column = pq.read_table(file, columns=["token_id"]).column("token_id")
        except Exception as exc:  # noqa: BLE001
            raise TraceError(f"{file}: not a readable samples file with column token_id "
                             f"({c.first_line(exc)})") from None
        parts.append(column.to_numpy())
        have += len(parts[-1])
        if have >= n:
            break
    tokens = np.concatenate(parts)[:n]
    return tokens if tokens.size == n else None


def _requests(samples: np.ndarray | None, n: int, file_lengths: tuple | None, window: int,
              prompt_tokens: int, where: str) -> tuple[np.ndarray, np.ndarray, str]:
    """Request lengths [R], prompt lengths [R] and a description of the rule used."""
    if file_lengths is not None:
        lengths, prompts = file_lengths
        if int(lengths.sum()) != n:
            raise ConfigError(f"{where}: the lengths file covers {int(lengths.sum())} tokens, "
                              f"the files hold {n}")
        if prompts is None:
            prompts = np.minimum(lengths, prompt_tokens)
        return lengths, prompts, "from the lengths file"
    cuts = [0]
    if samples is not None:
        cuts += [int(i) + 1 for i in np.flatnonzero(samples[: n - 1] == END_OF_TEXT)]
    cuts.append(n)
    lengths = []
    for lo, hi in zip(cuts[:-1], cuts[1:], strict=False):
        while hi - lo > window:
            lengths.append(window)
            lo += window
        if hi > lo:
            lengths.append(hi - lo)
    lengths = np.asarray(lengths, np.int64)
    rule = (f"cut after every end-of-text token (id {END_OF_TEXT}) and into windows of at most "
            f"{window} tokens; the capture records no sequence boundaries")
    if samples is None:
        rule = f"windows of {window} tokens (no token ids, so no end-of-text cut)"
    return lengths, np.minimum(lengths, prompt_tokens), rule


def _common_meta(layers: dict[int, _Layer]) -> dict[str, Any]:
    """Metadata every layer file agrees on (model, run id, iteration...)."""
    metas = [l.meta for l in layers.values()]
    if not metas:
        return {}
    # num_sequences / sequence_length in the excerpt's files are its copier's assumption, not
    # recorded boundaries: left out rather than passed on as facts
    keys = set.intersection(*(set(m) for m in metas)) - {"layer", "num_sequences",
                                                         "sequence_length"}
    return {k: metas[0][k] for k in sorted(keys) if all(m[k] == metas[0][k] for m in metas)}


def _import_positions(folder: Path, files: dict[int, Path], model: str | ModelSpec | None,
                      max_tokens: int | None) -> Trace:
    """The per-position layout: one request per sequence (row), positions from the files."""
    where = str(folder)
    by_position: dict[int, dict[int, _Layer]] = {}
    for key, path in files.items():
        position, block = divmod(key, 1000)
        layer = _read_pt(path)
        stated = layer.meta.get("token_position")
        if stated is not None and stated != position:
            raise TraceError(f"{path}: says it holds position {stated}")
        by_position.setdefault(position, {})[block] = layer
    first = next(iter(by_position.values()))
    spec = _spec(model, first, folder)
    positions = sorted(by_position)
    stacks = [_stack(by_position[p], spec, f"{where} (position {p:02d})", None)
              for p in positions]
    n_seq = stacks[0][0].shape[0]
    if any(s[0].shape[0] != n_seq for s in stacks):
        raise TraceError(f"{where}: the positions hold different numbers of sequences")
    ids = np.stack([s[0] for s in stacks], axis=1)  # [S, P, L, k]
    scores = np.stack([s[1] for s in stacks], axis=1)  # [S, P, L, k]
    n_layers, k = spec.num_moe_layers, spec.top_k
    ids, scores = ids.reshape(-1, n_layers, k), scores.reshape(-1, n_layers, k)  # [S*P, L, k]
    request_id = np.repeat(np.arange(n_seq, dtype=np.int32), len(positions))
    position = np.tile(np.asarray(positions, np.int32), n_seq)
    phase = np.where(position == positions[0], PREFILL, DECODE).astype(np.int8)
    if max_tokens is not None:
        keep = slice(0, max_tokens)
        request_id, position, phase = request_id[keep], position[keep], phase[keep]
        ids, scores = ids[keep], scores[keep]
    prov = c.provenance("flame-import", "moe_offload_lab.traces.importers.flame", folder, spec,
                        layout="position", files=sorted(p.name for p in files.values()),
                        metadata=_common_meta(first),
                        requests="one request per recorded sequence (row), positions "
                                 f"{positions[0]}..{positions[-1]} from the file names",
                        gates="the router's softmax probabilities over all experts, as "
                              "recorded (not renormalised over the top-k)",
                        phase="the first recorded position prefill, the rest decode",
                        dataset={"name": "CMU-FLAME/FLAME-MoE-Traces", "license": "Apache-2.0"},
                        lost=["token ids"])
    return c.build_trace(spec, request_id, position, phase, c.check_expert_ids(ids, spec, where),
                         scores, prov, where)
