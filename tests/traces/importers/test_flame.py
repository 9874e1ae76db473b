"""``moe-trace import --from flame``: the FLAME-MoE dataset layouts, the request split, errors.

The files are built here in the dataset's layouts (torch dicts per layer, per position, and the
Parquet release) for a small stand-in model, so no download is needed.
"""

from __future__ import annotations

import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from moe_offload_lab.traces.format import DECODE, PREFILL, Trace
from moe_offload_lab.traces.importers.cli import main
from moe_offload_lab.traces.importers.flame import import_flame
from moe_offload_lab.traces.spec import ModelSpec

torch = pytest.importorskip("torch")

# 4 blocks, block 0 dense: the dataset numbers the MoE blocks 02, 03, 04 (1-based)
SPEC = ModelSpec(name="flame-mini", num_layers=4, num_experts=8, top_k=3, hidden_size=8,
                 expert_intermediate_size=8, first_k_dense=1)
BLOCKS = (2, 3, 4)


@pytest.fixture
def model_yaml(tmp_path):
    path = tmp_path / "flame-mini.yaml"
    path.write_text(yaml.safe_dump(SPEC.to_dict()), encoding="utf-8")
    return path


def _rows(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token ids [n] (an end-of-text, 0, at row 6), ids [n, L, k], descending scores."""
    rng = np.random.default_rng(seed)
    samples = rng.integers(1, 1000, n)
    samples[6] = 0
    ids = np.stack([np.stack([rng.choice(8, 3, replace=False) for _ in BLOCKS])
                    for _ in range(n)])  # [n, L, k]
    scores = -np.sort(-rng.random((n, len(BLOCKS), 3)), axis=2).astype(np.float32) / 3
    return samples, ids, scores


def _write_stream(folder, n: int = 20, model: str = "flame-mini", **change) -> tuple:
    folder.mkdir(parents=True, exist_ok=True)
    samples, ids, scores = _rows(n)
    for i, block in enumerate(BLOCKS):
        data = {"model": model, "runid": 1, "epoch": 7, "layer": block, "num_tokens": n,
                "samples": torch.tensor(samples), "indices": torch.tensor(ids[:, i]),
                "scores": torch.tensor(scores[:, i])}
        data.update(change.get(block, {}))
        torch.save(data, folder / f"layer{block:02d}.pt")
    return samples, ids, scores


def test_the_stream_layout_becomes_requests_cut_at_end_of_text_and_windows(tmp_path,
                                                                            model_yaml):
    samples, ids, scores = _write_stream(tmp_path / "actives")
    trace = import_flame(tmp_path / "actives", str(model_yaml), window=5)
    np.testing.assert_array_equal(trace.expert_ids, ids)
    np.testing.assert_allclose(trace.gate_weights, scores)  # recorded shares, not renormalised
    # end-of-text at row 6 ends a request (rows 0..6: windows 5 + 2), then 13 rows in windows
    lengths = np.bincount(trace.request_id)
    assert lengths.tolist() == [5, 2, 5, 5, 3]
    starts = np.flatnonzero(np.diff(np.concatenate([[-1], trace.request_id])))
    assert (trace.phase[starts] == PREFILL).all()
    assert (np.delete(trace.phase, starts) == DECODE).all()
    assert trace.provenance["source"] == "flame-import"
    assert trace.provenance["metadata"]["epoch"] == 7


def test_the_model_is_read_from_the_files_and_a_lengths_file_replaces_the_split(tmp_path):
    folder = tmp_path / "stream"
    folder.mkdir()
    rng = np.random.default_rng(3)
    n = 12
    for block in range(2, 10):  # the real model's 8 MoE blocks, its name in the metadata
        ids = np.stack([rng.choice(64, 6, replace=False) for _ in range(n)])
        torch.save({"model": "flame-moe-290m", "layer": block,
                    "samples": torch.arange(1, n + 1), "indices": torch.tensor(ids),
                    "scores": torch.full((n, 6), 0.05)}, folder / f"layer{block:02d}.pt")
    listing = tmp_path / "lengths.txt"
    listing.write_text("8 2\n4 1\n")
    out = tmp_path / "flame.parquet"
    assert main(["import", "--from", "flame", str(folder), "--lengths", str(listing),
                 "-o", str(out)]) == 0
    trace = Trace.load(out)
    assert trace.spec.name == "flame-moe-290m"
    assert np.bincount(trace.request_id).tolist() == [8, 4]
    assert trace.phase.tolist() == [0, 0] + [1] * 6 + [0] + [1] * 3


def test_the_per_position_layout_gives_one_request_per_sequence(tmp_path, model_yaml):
    folder = tmp_path / "decoder_first10"
    folder.mkdir()
    rng = np.random.default_rng(1)
    n_seq, positions = 4, (0, 1, 2)
    expected = np.empty((n_seq, len(positions), len(BLOCKS), 3), np.int64)
    for p in positions:
        for i, block in enumerate(BLOCKS):
            ids = np.stack([rng.choice(8, 3, replace=False) for _ in range(n_seq)])
            expected[:, p, i] = ids
            torch.save({"layer": block, "token_position": p, "samples": torch.arange(n_seq),
                        "indices": torch.tensor(ids), "scores": torch.full((n_seq, 3), 0.2)},
                       folder / f"pos{p:02d}_layer{block:02d}.pt")
    trace = import_flame(folder, str(model_yaml))
    assert trace.request_id.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert trace.position.tolist() == [0, 1, 2] * n_seq
    np.testing.assert_array_equal(trace.expert_ids, expected.reshape(-1, len(BLOCKS), 3))


def test_the_parquet_release_with_its_samples_folder(tmp_path, model_yaml):
    root = tmp_path / "flame-mini"
    actives = root / "actives" / "iter_0007"
    actives.mkdir(parents=True)
    (root / "samples").mkdir()
    samples, ids, scores = _rows(20)
    pq.write_table(pa.table({"token_id": pa.array(samples[:11], pa.int32())}),
                   root / "samples" / "000.parquet")
    pq.write_table(pa.table({"token_id": pa.array(samples[11:], pa.int32())}),
                   root / "samples" / "001.parquet")
    for i, block in enumerate(BLOCKS):
        pq.write_table(pa.table({
            "scores": pa.array(scores[:, i].astype(np.float16).tolist(),
                               pa.list_(pa.float16(), 3)),
            "indices": pa.array(ids[:, i].tolist(), pa.list_(pa.int16(), 3))}),
            actives / f"layer_{block:02d}.parquet")
    trace = import_flame(actives, str(model_yaml), window=100, max_tokens=15)
    np.testing.assert_array_equal(trace.expert_ids, ids[:15])
    assert np.bincount(trace.request_id).tolist() == [7, 8]  # cut after the end-of-text


@pytest.mark.parametrize("case, message", [
    ("garbage", "not a readable torch.save file"),
    ("missing-layer", "found layer files [2, 3]"),
    ("rows", "different numbers of tokens"),
    ("samples", "different token streams"),
    ("duplicate", "picks an expert twice"),
    ("range", "outside [0, 8)"),
    ("layer-field", "says it holds layer 9"),
    ("no-scores", "missing field(s) scores"),
    ("width", "experts per token"),
    ("nan", "NaN or infinite"),
])
def test_a_malformed_file_is_one_line_and_nothing_is_written(case, message, tmp_path,
                                                             model_yaml, capsys):
    folder = tmp_path / "bad"
    _write_stream(folder)
    target = folder / "layer03.pt"
    data = torch.load(target, weights_only=True)
    if case == "garbage":
        target.write_bytes(b"this is not a torch file")
    elif case == "missing-layer":
        (folder / "layer04.pt").unlink()
    elif case == "rows":
        data["indices"], data["scores"] = data["indices"][:-1], data["scores"][:-1]
        data["samples"] = data["samples"][:-1]
    elif case == "samples":
        data["samples"] = data["samples"] + 1
    elif case == "duplicate":
        data["indices"][2, 1] = data["indices"][2, 0]
    elif case == "range":
        data["indices"][0, 0] = 8
    elif case == "layer-field":
        data["layer"] = 9
    elif case == "no-scores":
        del data["scores"]
    elif case == "width":
        data["indices"], data["scores"] = data["indices"][:, :2], data["scores"][:, :2]
    elif case == "nan":
        data["scores"][1, 1] = float("nan")
    if case not in ("garbage", "missing-layer"):
        torch.save(data, target)
    out = tmp_path / "out.parquet"
    assert main(["import", "--from", "flame", str(folder), "--model", str(model_yaml),
                 "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not out.exists() and not list(tmp_path.glob(".out.parquet*"))


@pytest.mark.parametrize("setup, message", [
    ("empty", "no FLAME routing files"),
    ("file", "not a folder"),
    ("mixed", "mixes FLAME layouts"),
    ("unknown-model", "cannot tell the model"),
])
def test_unusable_folders_and_options(setup, message, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    if setup == "file":
        folder = tmp_path / "plain.txt"
        folder.write_text("x")
    elif setup == "mixed":
        _write_stream(folder)
        (folder / "layer_02.parquet").write_bytes(b"x")
    elif setup == "unknown-model":
        _write_stream(folder, model="no-such-model")
    assert main(["import", "--from", "flame", str(folder), "-o",
                 str(tmp_path / "o.parquet")]) == 2
    assert message in capsys.readouterr().err


def test_options_of_other_formats_are_refused(tmp_path, capsys):
    assert main(["import", "--from", "csv", "x.csv", "--max-tokens", "3", "--model",
                 "mixtral-8x7b", "-o", str(tmp_path / "o.parquet")]) == 2
    assert "--max-tokens applies to --from flame only" in capsys.readouterr().err
    assert main(["import", "--from", "csv", "x.csv", "-o", str(tmp_path / "o.parquet")]) == 2
    assert "--model is required for --from csv" in capsys.readouterr().err


def test_without_torch_the_pt_layout_says_what_to_install(tmp_path, model_yaml, monkeypatch,
                                                          capsys):
    _write_stream(tmp_path / "s")
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    assert main(["import", "--from", "flame", str(tmp_path / "s"), "--model", str(model_yaml),
                 "-o", str(tmp_path / "o.parquet")]) == 2
    assert "needs torch" in capsys.readouterr().err  # and nothing else
