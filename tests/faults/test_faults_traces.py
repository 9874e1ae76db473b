"""moe-trace synth, import and record, and moe-train, killed and interrupted at random points,
then rerun: a trace or checkpoint is either the previous complete one or the new complete one,
a recording resumes from its finished batches, a rerun gives the uninterrupted result."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
from faults_testing import (
    assert_interrupted_cleanly,
    check_tree,
    checked,
    command,
    lost,
    no_temporaries,
    run,
    signal_at_random,
    start,
    wait_until,
)
from moe_offload_lab.traces.cli import main as moe_trace
from moe_offload_lab.traces.format import Trace
from moe_offload_lab.traces.importers.cli import main as importers


def _synth(seed: int) -> list[str]:
    return ["synth", "--preset", "olmoe-1b-7b", "--tokens", "25000", "--seed", str(seed),
            "--quiet"]


SYNTH = _synth(0)


def _equal(a: Trace, b: Trace) -> bool:
    return (a.num_tokens == b.num_tokens and np.array_equal(a.expert_ids, b.expert_ids)
            and np.array_equal(a.gate_weights, b.gate_weights)
            and np.array_equal(a.request_id, b.request_id))


@pytest.fixture(scope="module")
def synth_refs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Trace]:
    """The trace the command writes (seed 0) and an older one at the same path (seed 1)."""
    folder = tmp_path_factory.mktemp("refs")
    refs = {}
    for name, seed in (("new", 0), ("old", 1)):
        assert moe_trace([*_synth(seed), "-o", str(folder / f"{name}.parquet")]) == 0
        refs[name] = Trace.load(folder / f"{name}.parquet")
    return refs


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill", "interrupt"])
def test_synth_replaces_a_trace_whole_or_not_at_all(tmp_path: Path, synth_refs: dict[str, Trace],
                                                    sig: int) -> None:
    out = tmp_path / "t.parquet"
    assert moe_trace([*_synth(1), "-o", str(out)]) == 0  # the file the run replaces
    outcome = signal_at_random(start(command("traces.cli", *SYNTH, "-o", out)), sig, 3.5)
    if sig == signal.SIGINT:
        assert_interrupted_cleanly(outcome, (0, 130))
    check_tree(tmp_path)
    left = Trace.load(out)
    assert _equal(left, synth_refs["old"]) or _equal(left, synth_refs["new"])
    assert run(command("traces.cli", *SYNTH, "-o", out)).returncode == 0
    assert _equal(Trace.load(out), synth_refs["new"])
    checked(2)
    no_temporaries(tmp_path)


def test_import_writes_whole_or_nothing(tmp_path: Path) -> None:
    source = tmp_path / "source.parquet"
    assert moe_trace(["synth", "--preset", "olmoe-1b-7b", "--tokens", "20000", "--quiet", "-o",
                      str(source)]) == 0
    capture = tmp_path / "capture.npz"
    assert importers(["export", "--to", "vllm", str(source), "-o", str(capture)]) == 0
    out = tmp_path / "imported.parquet"
    args = ["import", "--from", "vllm", capture, "--model", "olmoe-1b-7b", "-o", out]
    outcome = signal_at_random(start(command("traces.cli", *args)), signal.SIGKILL, 4.0)
    assert outcome.returncode != 0 or out.is_file()
    check_tree(tmp_path)
    assert run(command("traces.cli", *args)).returncode == 0
    imported = Trace.load(out)
    assert np.array_equal(imported.expert_ids, Trace.load(source).expert_ids)
    checked(1)
    no_temporaries(tmp_path)


RECORD = ["record", "--config", "tiny-mixtral", "--max-new-tokens", "6", "--batch-size", "1",
          "--quiet"]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill", "interrupt"])
def test_record_resumes_from_its_finished_batches(tmp_path: Path, sig: int) -> None:
    """After the signal, the finished batches are on disk, whole; the rerun uses them (a
    relabelled batch 0 shows up in the final trace) and records only the rest."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"def f{i}(x): return x * {i}" for i in range(5)) + "\n")
    out = tmp_path / "rec.parquet"
    parts = tmp_path / "rec.parquet.parts"
    args = [*RECORD, "--prompts", prompts, "-o", out]
    reference = tmp_path / "ref.parquet"
    assert moe_trace([*RECORD, "--prompts", str(prompts), "-o", str(reference)]) == 0
    ref = Trace.load(reference)
    proc = start(command("traces.cli", *args))
    wait_until(proc, lambda: (parts / "part-00000.npz").is_file())
    outcome = signal_at_random(proc, sig, 2.0)
    if out.is_file():  # it had finished (the signal, if any, came as it exited)
        assert _equal(Trace.load(out), ref) and not parts.exists()
        checked(1)
        return
    if sig == signal.SIGINT:  # -2: it came while Python was still importing
        assert_interrupted_cleanly(outcome, (130,))
        assert outcome.returncode == -2 or "run the same command again" in outcome.stderr
    kept = check_tree(parts)
    part0 = parts / "part-00000.npz"
    assert part0 in kept
    experts = 8  # tiny-mixtral
    with np.load(part0) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["expert_ids"] = (arrays["expert_ids"] + 1) % experts  # still a valid routing
    np.savez(part0, **arrays)
    rerun = run(command("traces.cli", *args))
    assert rerun.returncode == 0, rerun.stderr
    final = Trace.load(out)
    n0 = int(arrays["token_counts"].sum())
    reused = np.array_equal(final.expert_ids[:n0], (ref.expert_ids[:n0] + 1) % experts)
    assert lost(0 if reused else len(kept)) == 0  # finished batches were not recorded again
    assert np.array_equal(final.expert_ids[n0:], ref.expert_ids[n0:])
    assert not parts.exists()
    checked(2)


TRAIN = ["predictor=mlp-history", "train.epochs=3", "train.max_steps=40", "cost.repeats=2",
         "cost.warmup=1", "cost.batches=[1,4]", "trace.bundled=null", "trace.preset=switch-base-8",
         "trace.tokens=3000"]


def test_train_writes_a_whole_checkpoint_or_none(tmp_path: Path) -> None:
    from moe_offload_lab.policies.learned import checkpoint
    from moe_offload_lab.traces.errors import ConfigError

    out = tmp_path / "model"
    outcome = signal_at_random(start(command("policies.learned.cli", *TRAIN, f"out={out}")),
                               signal.SIGKILL, 10.0)
    files = sorted(p.name for p in out.glob("model.*")) if out.exists() else []
    check_tree(tmp_path)
    if files == ["model.json", "model.pt"]:
        checkpoint.load(out / "model.pt")
    elif files:  # killed between the two files: refused as incomplete, never half-read
        with pytest.raises(ConfigError):
            checkpoint.load(out / "model.pt")
    assert outcome.returncode != 0 or files == ["model.json", "model.pt"]
    assert run(command("policies.learned.cli", *TRAIN, f"out={out}")).returncode == 0
    model, meta = checkpoint.load(out / "model.pt")
    assert meta["name"] == "mlp-history"
    checked(1)
    no_temporaries(tmp_path)
