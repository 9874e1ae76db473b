"""``moe-trace fit``: the held-out check on real FLAME routing, presets it writes, refusals."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from moe_offload_lab.traces import bundled
from moe_offload_lab.traces.cli import main
from moe_offload_lab.traces.fit import check_fittable, fit_trace, holdout_check, write_preset
from moe_offload_lab.traces.format import Trace
from moe_offload_lab.traces.synth import SynthConfig, generate

# Tolerances of the held-out check (traces/README.md, "Fitting a preset to a real trace"): the
# synthetic traces (fit on the first 1,024 tokens, mean of 4 traces of 1,024 tokens) against the
# real second half. Skew gets the widest band: the real halves themselves differ by 0.25.
TOLERANCE = {
    ("lru_hit_ratio", "0.25"): 0.04, ("lru_hit_ratio", "0.5"): 0.04,
    ("lru_hit_ratio", "0.75"): 0.04,
    ("belady_hit_ratio", "0.25"): 0.03, ("belady_hit_ratio", "0.5"): 0.03,
    ("belady_hit_ratio", "0.75"): 0.03,
    ("adjacent_overlap", "ratio"): 0.10,
    ("top1_transition", "accuracy"): 0.03,
    ("hottest_share", "mean"): 0.35,
    ("entropy_bits", "mean"): 0.06,
}


@pytest.fixture(scope="module")
def flame() -> Trace:
    return bundled.load("flame-moe-290m")


def test_a_fit_on_the_first_half_of_flame_reproduces_the_second_half(flame):
    check = holdout_check(flame, seeds=4, seed=0)
    misses = []
    for (block, key), tolerance in TOLERANCE.items():
        real, synthetic = check["second"][block][key], check["synthetic"][block][key]
        if abs(synthetic - real) > tolerance:
            misses.append(f"{block}.{key}: synthetic {synthetic:.3f}, real {real:.3f}")
    assert not misses, misses
    # the cross-layer structure is real structure, far above the popularity baseline
    assert check["synthetic"]["top1_transition"]["accuracy"] > \
        3 * check["synthetic"]["top1_transition"]["popular"]


def test_the_written_preset_generates_long_traces_of_the_same_model(tmp_path):
    real = bundled.load("tiny-moe-stdlib")  # lookahead and features: both fitted
    real = real.select(np.flatnonzero(real.request_id < 24))
    result = fit_trace(real, dim=16, seed=1)
    preset, structure = write_preset(result, tmp_path / "tiny.yaml", source="tiny",
                                     tokens=real.num_tokens, requests=24)
    assert structure == tmp_path / "tiny.npz" and structure.is_file()
    text = preset.read_text()
    assert text.startswith("# Fitted by moe-trace fit")
    config = yaml.safe_load(text)
    assert config["structure"]["file"] == "tiny.npz"
    assert config["features"]["width"] == 16 and config["lookahead"]["distances"] == 2
    synthetic = generate(SynthConfig.preset(str(preset)), tokens=3000, seed=2)
    assert synthetic.spec == real.spec
    assert synthetic.features.shape == (3000, 4, 16)
    assert sorted(synthetic.lookahead) == [1, 2]


def _trace(tokens: int, requests: int, *, name: str = "olmoe-1b-7b") -> Trace:
    trace = generate(name, tokens=tokens, seed=0, features=0)
    order = np.arange(tokens)
    trace.request_id = (order * requests // tokens).astype(np.int32)
    trace.position = (order - np.searchsorted(trace.request_id, trace.request_id)).astype(np.int32)
    trace.phase = np.ones(tokens, np.int8)
    trace.validate()
    return trace


@pytest.mark.parametrize("tokens, requests, message", [
    (100, 4, "too short to fit (100 tokens)"),
    (600, 1, "a single request"),
    (600, 600, "no request has two tokens"),
])
def test_traces_that_cannot_be_fitted_are_refused(tokens, requests, message, tmp_path, capsys):
    trace = _trace(tokens, requests)
    with pytest.raises(Exception, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_fittable(trace)
    source = trace.save(tmp_path / "real.parquet")
    out = tmp_path / "preset.yaml"
    assert main(["fit", str(source), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert list(tmp_path.iterdir()) == [source]  # nothing written, not even the .npz


def test_bad_output_names_and_inputs(tmp_path, capsys):
    assert main(["fit", str(bundled.path("flame-moe-290m")), "-o", str(tmp_path / "x.txt")]) == 2
    assert "name it *.yaml" in capsys.readouterr().err
    assert main(["fit", str(tmp_path / "missing.parquet"), "-o", str(tmp_path / "x.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
