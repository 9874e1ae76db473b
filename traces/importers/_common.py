"""Helpers shared by the importers and exporters: specs, atomic writes, layer axes, provenance.

Every reader raises :class:`~traces.errors.TraceError` (a bad input file) or
:class:`~traces.errors.ConfigError` (a bad option) with one line that names the file; every writer
goes through :func:`atomic_write`, so a failure never leaves a partial output behind.
"""

from __future__ import annotations

import datetime as dt
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
from moe_offload_lab.traces.atomic import atomic_path
from moe_offload_lab.traces.errors import ConfigError, TraceError, first_line  # noqa: F401 - re-exported
from moe_offload_lab.traces.format import DECODE, PREFILL, Trace
from moe_offload_lab.traces.hf_config import load_model_spec
from moe_offload_lab.traces.spec import ModelSpec


def load_spec(model: str | Path | ModelSpec) -> ModelSpec:
    """A ModelSpec from a bundled name (``mixtral-8x7b``), a YAML path, a Hugging Face
    ``config.json`` (or the checkpoint folder holding it), or a ModelSpec."""
    return load_model_spec(model)


def load_torch_file(path: Path, what: str) -> Any:
    """The object a ``torch.save`` file holds, loaded on the CPU without running pickled code
    (``weights_only``). torch is imported here only; without it, one ConfigError."""
    require_file(path)
    try:
        import torch
    except ImportError:
        raise ConfigError(f"{path}: reading {what} (a torch.save file) needs torch; install the "
                          f"record extra: pip install 'moe-offload-lab[record]'") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise TraceError(f"{path}: not a readable torch.save file (damaged, or holding objects "
                         f"other than tensors, numbers, strings and containers)") from None
    except (OSError, RuntimeError, EOFError, ValueError, AttributeError, ImportError, KeyError,
            TypeError, zipfile.BadZipFile) as exc:
        raise TraceError(f"{path}: not a readable torch.save file ({first_line(exc)})") from None


def to_numpy(value: Any, name: str, where: str) -> np.ndarray:
    """A tensor, array or nested list as a numpy array (one-line error for anything else)."""
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor
        return value.detach().to("cpu").numpy()
    try:
        array = np.asarray(value)
    except (TypeError, ValueError):
        array = np.asarray(None, dtype=object)
    if array.dtype == object:
        raise TraceError(f"{where}: {name} is not a numeric array")
    return array


def require_file(path: Path) -> None:
    """Fail with one line when ``path`` is missing or not a regular file."""
    if not path.exists():
        raise TraceError(f"{path}: no such file")
    if not path.is_file():
        raise TraceError(f"{path}: not a file")


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(binary file)`` on a temporary file beside ``path``, then rename it over
    ``path``; on any failure the temporary file is removed and ``path`` is left untouched."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        write(handle)
    return Path(path)


def load_npy(path: Path) -> np.ndarray:
    """One array from a ``.npy`` file (no pickles), with one-line errors."""
    require_file(path)
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise TraceError(f"{path}: not a readable .npy file ({first_line(exc)})") from None
    if not isinstance(array, np.ndarray):
        raise TraceError(f"{path}: expected a .npy array, found an .npz archive")
    return array


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` archive in archive order (no pickles), with one-line errors."""
    require_file(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise TraceError(f"{path}: expected an .npz archive, found a single array")
            return {name: archive[name] for name in archive.files}
    except TraceError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise TraceError(f"{path}: not a readable .npz archive ({first_line(exc)})") from None
    except AttributeError:  # np.load returned a plain array: a .npy file named .npz
        raise TraceError(f"{path}: expected an .npz archive, found a single array") from None


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write an uncompressed ``.npz`` atomically (the name is kept exactly, no suffix added)."""
    return atomic_write(path, lambda handle: np.savez(handle, **arrays))


def integer_array(array: np.ndarray, name: str, where: str) -> np.ndarray:
    """``array`` as int64 after checking that it holds integers (any integer dtype, or floats
    whose values are whole numbers)."""
    if array.dtype.kind in "iu":
        return array.astype(np.int64)
    if array.dtype.kind == "f":
        if not np.isfinite(array).all() or (array != np.round(array)).any():
            raise TraceError(f"{where}: {name} holds non-integer values")
        return array.astype(np.int64)
    raise TraceError(f"{where}: {name} has dtype {array.dtype}, expected integers")


def to_moe_layers(ids: np.ndarray, spec: ModelSpec, where: str, axis: int = 1) -> np.ndarray:
    """Select the MoE layers of an array whose layer axis (``axis``) has either the spec's
    ``num_moe_layers`` entries (dense MoE index, taken as is) or ``num_layers`` entries (every
    transformer block, as vLLM lays it out; the dense blocks' rows are dropped)."""
    n = ids.shape[axis]
    if n == spec.num_moe_layers:
        return ids
    if n == spec.num_layers:
        return np.take(ids, list(spec.moe_layer_indices), axis=axis)
    raise TraceError(f"{where}: the layer axis has {n} entries, but model {spec.name!r} has "
                     f"{spec.num_moe_layers} MoE layers ({spec.num_layers} blocks)")


def check_expert_ids(ids: np.ndarray, spec: ModelSpec, where: str) -> np.ndarray:
    """ids [T, L, k] (any integer dtype) -> int16, with the range and distinctness checked."""
    if ids.size:
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= spec.num_experts:
            bad = np.argwhere((ids < 0) | (ids >= spec.num_experts))[0]
            raise TraceError(f"{where}: expert id {int(ids[tuple(bad)])} at token {bad[0]}, "
                             f"layer {bad[1]} is outside [0, {spec.num_experts}) of model "
                             f"{spec.name!r}")
    ids = ids.astype(np.int16)
    ordered = np.sort(ids, axis=2)  # [T, L, k]
    dup = (ordered[:, :, 1:] == ordered[:, :, :-1]).any(axis=2)
    if dup.any():
        token, layer = np.argwhere(dup)[0]
        raise TraceError(f"{where}: token {token}, layer {layer} picks an expert twice: "
                         f"{ids[token, layer].tolist()}")
    return ids


def uniform_gates(shape: tuple[int, ...]) -> np.ndarray:
    """Gate weights 1/k for a [T, L, k] array: what importers fill in when a format has none."""
    return np.full(shape, 1.0 / shape[-1], dtype=np.float32)


def provenance(source: str, importer: str, path: Path, spec: ModelSpec,
               **details: Any) -> dict[str, Any]:
    """The provenance of an imported trace: format, importer module, input file name (not its
    folder), model name, and what was filled in or lost."""
    return {
        "source": source,
        "importer": importer,
        "input": Path(path).name,
        "model": spec.name,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **details,
    }


def build_trace(spec: ModelSpec, request_id: np.ndarray, position: np.ndarray, phase: np.ndarray,
                expert_ids: np.ndarray, gates: np.ndarray, prov: dict[str, Any],
                where: str) -> Trace:
    """Assemble and validate a Trace (TraceError naming ``where`` on any inconsistency)."""
    if not np.asarray(request_id).size:
        raise TraceError(f"{where}: no token to import")
    info = np.iinfo(np.int32)
    for name, values in (("request_id", request_id), ("position", position)):
        values = np.asarray(values)
        if values.size and (values.min() < info.min or values.max() > info.max):
            raise TraceError(f"{where}: a {name} does not fit in int32")
    phase = np.asarray(phase)
    if phase.size and not np.isin(phase, (PREFILL, DECODE)).all():
        row = int(np.argmax(~np.isin(phase, (PREFILL, DECODE))))
        raise TraceError(f"{where}: phase must be 0 (prefill) or 1 (decode); token {row} has "
                         f"{int(phase[row])}")
    trace = Trace(spec=spec, request_id=np.asarray(request_id, np.int32),
                  position=np.asarray(position, np.int32), phase=np.asarray(phase, np.int8),
                  expert_ids=expert_ids, gate_weights=np.asarray(gates, np.float32),
                  provenance=prov)
    trace.validate(where)
    return trace


def read_lengths(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """A request lengths file: one request per line, ``TOKENS`` or ``TOKENS PROMPT_TOKENS``
    (whitespace or comma separated); blank lines and ``#`` comments are skipped.

    Returns the token counts [R] and the prompt counts [R] (``None`` when no line gives one; all
    lines must then agree on having one or not).
    """
    require_file(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the lengths file ({first_line(exc)})") from None
    tokens, prompts = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].replace(",", " ").strip()
        if not line:
            continue
        fields = line.split()
        try:
            values = [int(v) for v in fields]
        except ValueError:
            values = []
        if len(values) not in (1, 2) or min(values) < 0 or (len(values) == 2 and
                                                            values[1] > values[0]):
            raise ConfigError(f"{path}:{number}: expected 'TOKENS' or 'TOKENS PROMPT_TOKENS' "
                              f"(integers, 0 <= PROMPT_TOKENS <= TOKENS), got {line!r}")
        tokens.append(values[0])
        prompts.append(values[1] if len(values) == 2 else None)
    if not tokens:
        raise ConfigError(f"{path}: the lengths file lists no request")
    given = [p is not None for p in prompts]
    if any(given) and not all(given):
        raise ConfigError(f"{path}: either every line or no line must give PROMPT_TOKENS")
    return (np.array(tokens, np.int64),
            np.array(prompts, np.int64) if all(given) else None)


def request_rows(lengths: np.ndarray, prompt_lengths: np.ndarray | None,
                 request_ids: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """request_id, position, phase [T] for requests stored one after another.

    Request ``r`` has ``lengths[r]`` rows, positions ``0 ..``; its first ``prompt_lengths[r]``
    rows are prefill and the rest decode (all prefill when ``prompt_lengths`` is ``None``).
    """
    ids = np.arange(len(lengths)) if request_ids is None else np.asarray(request_ids)
    request_id = np.repeat(ids, lengths).astype(np.int32)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    position = (np.arange(int(lengths.sum())) - starts).astype(np.int32)
    if prompt_lengths is None:
        phase = np.full(position.shape, PREFILL, np.int8)
    else:
        phase = np.where(position < np.repeat(prompt_lengths, lengths), PREFILL,
                         DECODE).astype(np.int8)
    return request_id, position, phase


def grouped_by_request(trace: Trace) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row order that groups a trace by request (requests in order of first appearance, rows in
    their original order within a request), the distinct request ids in that order [R] and the
    number of rows of each [R]."""
    if not trace.num_tokens:
        empty = np.empty(0, np.int64)
        return empty, empty, empty
    uniq, first, inverse, counts = np.unique(trace.request_id, return_index=True,
                                             return_inverse=True, return_counts=True)
    appearance = np.argsort(first, kind="stable")  # [R] index into uniq, by first appearance
    rank = np.empty(len(uniq), np.int64)
    rank[appearance] = np.arange(len(uniq))
    order = np.argsort(rank[inverse.reshape(-1)], kind="stable")
    return order, uniq[appearance].astype(np.int64), counts[appearance].astype(np.int64)


def prompt_lengths_of(trace: Trace, order: np.ndarray, lengths: np.ndarray,
                      what: str) -> np.ndarray:
    """Per request (rows grouped by ``order``, ``lengths`` rows each) the number of leading
    prefill rows; ConfigError when a request has a prefill row after a decode row, which a
    prompt length cannot express."""
    phase = trace.phase[order].astype(np.int64)  # [T], requests contiguous
    if not phase.size:
        return np.empty(0, np.int64)
    starts = np.cumsum(lengths) - lengths
    back = np.flatnonzero(phase[1:] < phase[:-1]) + 1  # rows where decode -> prefill
    back = back[~np.isin(back, starts)]  # a new request may start with prefill
    if back.size:
        rid = int(trace.request_id[order][back[0]])
        raise ConfigError(f"{what}: request {rid} has a prefill token after a decode token, "
                          f"which this format cannot hold")
    return np.add.reduceat(1 - phase, starts).astype(np.int64)


def save_npy(path: Path, array: np.ndarray) -> Path:
    """Write one array as ``.npy`` atomically (no pickles)."""
    return atomic_write(path, lambda handle: np.save(handle, array, allow_pickle=False))
