"""``moe-trace record`` end to end: checkpoints, random configs, resuming, and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from moe_offload_lab.traces.format import Trace
from moe_offload_lab.traces.record import cli as record_cli
from moe_offload_lab.traces.record import recorder
from moe_offload_lab.traces.record.tiny import build_tiny_model
from record_helpers import PROMPTS


def _prompt_file(tmp_path, lines=PROMPTS, name="prompts.txt"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    return path


def _run(args, capsys):
    code = record_cli.main(["record", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _leftovers(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("out", ".out")))


def test_records_a_saved_checkpoint_with_the_byte_fallback(tmp_path, capsys):
    model_dir = tmp_path / "tiny-granite"
    build_tiny_model("tiny-granitemoe", seed=1).save_pretrained(model_dir)
    capsys.readouterr()
    out = tmp_path / "out.parquet"
    code, stdout, err = _run([model_dir, "--prompts", _prompt_file(tmp_path), "--batch-size", 2,
                              "--max-new-tokens", 3, "--lookahead", 1, "-o", out, "--quiet"],
                             capsys)
    assert code == 0, err
    assert "wrote" in stdout
    trace = Trace.load(out)
    assert trace.spec.name == "tiny-granite"
    assert trace.spec.hf_architecture == "GraniteMoeForCausalLM"
    assert trace.provenance["tokenizer"] == "bytes"
    assert trace.provenance["dataset"]["prompts_file"] == "prompts.txt"
    meta = json.dumps(trace.provenance)
    assert str(tmp_path) not in meta  # no absolute path of this machine
    assert _leftovers(tmp_path) == ["out.parquet"]  # the work directory is gone


def test_jsonl_prompts_and_a_random_config(tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "first one"}\n\n{"text": "second, longer prompt"}\n',
                       encoding="utf-8")
    out = tmp_path / "out.parquet"
    code, _, err = _run(["--config", "tiny-qwen3-moe", "--prompts", prompts, "--features", 3,
                         "--max-new-tokens", 2, "-o", out, "--quiet"], capsys)
    assert code == 0, err
    trace = Trace.load(out)
    assert len(trace.request_ids()) == 2 and trace.features.shape[2] == 3
    assert trace.provenance["model_source"]["kind"] == "random weights"


def test_sampling_is_reproducible_and_depends_on_the_seed(prompts):
    model = build_tiny_model("tiny-mixtral", seed=0)
    runs = [recorder.record_requests(model, prompts, settings=recorder.RecordSettings(
        max_new_tokens=6, batch_size=2, temperature=1.5, seed=seed), progress=False).tokens
        for seed in (7, 7, 8)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_batching_does_not_change_the_routing(prompts):
    model = build_tiny_model("tiny-phimoe", seed=2)
    one = recorder.record(model, prompts, batch_size=1, max_new_tokens=3, progress=False)
    many = recorder.record(model, prompts, batch_size=5, max_new_tokens=3, progress=False)
    order_one = np.lexsort((one.position, one.request_id))
    order_many = np.lexsort((many.position, many.request_id))
    np.testing.assert_array_equal(np.sort(one.expert_ids[order_one], -1),
                                  np.sort(many.expert_ids[order_many], -1))


def test_an_interrupted_run_resumes_without_redoing_finished_batches(tmp_path, capsys,
                                                                    monkeypatch):
    prompts = _prompt_file(tmp_path)
    args = ["--config", "tiny-olmoe", "--prompts", prompts, "--batch-size", 2,
            "--max-new-tokens", 3, "--lookahead", 1, "--quiet"]
    reference = tmp_path / "reference.parquet"
    assert _run([*args, "-o", reference], capsys)[0] == 0

    real_run, calls = recorder._BatchRecorder.run, []

    def failing_run(self, batch, request_ids, generator):
        calls.append(request_ids[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_run(self, batch, request_ids, generator)

    monkeypatch.setattr(recorder._BatchRecorder, "run", failing_run)
    out = tmp_path / "out.parquet"
    code, _, err = _run([*args, "-o", out], capsys)
    assert code == 130 and "resume" in err
    assert not out.exists()
    assert sorted(p.name for p in (tmp_path / "out.parquet.parts").iterdir()) == [
        "manifest.json", "part-00000.npz"]

    calls.clear()
    monkeypatch.setattr(recorder._BatchRecorder, "run", lambda self, *a: (
        calls.append(a[1][0]), real_run(self, *a))[1])
    code, _, err = _run([*args, "-o", out], capsys)
    assert code == 0, err
    assert calls == [2, 4]  # the first batch (requests 0, 1) came from the work directory
    assert _leftovers(tmp_path) == ["out.parquet"]
    got, want = Trace.load(out), Trace.load(reference)
    np.testing.assert_array_equal(got.expert_ids, want.expert_ids)
    np.testing.assert_array_equal(got.lookahead[1], want.lookahead[1])
    np.testing.assert_array_equal(got.request_id, want.request_id)


def test_a_work_directory_of_other_arguments_is_refused(tmp_path, capsys, monkeypatch):
    prompts = _prompt_file(tmp_path)
    out = tmp_path / "out.parquet"
    monkeypatch.setattr(recorder._BatchRecorder, "run", lambda *a: (_ for _ in ()).throw(
        KeyboardInterrupt))
    base = ["--config", "tiny-mixtral", "--prompts", prompts, "--quiet", "-o", out]
    assert _run(base, capsys)[0] == 130
    code, _, err = _run([*base, "--max-new-tokens", 5], capsys)
    assert code == 2
    assert "other arguments" in err and len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def not_moe_model(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
    path = tmp_path_factory.mktemp("dense") / "llama"
    LlamaForCausalLM(config).save_pretrained(path)
    return path


@pytest.mark.parametrize("case, message", [
    ("empty", "holds no prompt"),
    ("blank-only", "holds no prompt"),
    ("latin1", "not UTF-8"),
    ("missing-prompts", "does not exist"),
    ("bad-jsonl", "line 2: not valid JSON"),
    ("jsonl-no-field", "line 1: expected an object"),
    ("missing-model", "does not exist"),
    ("not-a-model-dir", "no config.json"),
    ("not-moe", "not a Mixture-of-Experts config"),
    ("bad-config-name", "neither a tiny config name"),
    ("bad-batch", "batch_size must be at least 1"),
    ("bad-temperature", "temperature must be finite"),
])
def test_user_errors_are_one_line_and_leave_no_file(case, message, tmp_path, capsys,
                                                     not_moe_model):
    capsys.readouterr()  # drop the fixture's output
    prompts = _prompt_file(tmp_path)
    model = ["--config", "tiny-mixtral"]
    extra: list = []
    if case == "empty":
        prompts.write_text("", encoding="utf-8")
    elif case == "blank-only":
        prompts.write_text("\n  \n\n", encoding="utf-8")
    elif case == "latin1":
        prompts.write_bytes("caf\xe9\n".encode("latin-1"))
    elif case == "missing-prompts":
        prompts = tmp_path / "nope.txt"
    elif case == "bad-jsonl":
        prompts = tmp_path / "p.jsonl"
        prompts.write_text('{"prompt": "ok"}\n{oops\n', encoding="utf-8")
    elif case == "jsonl-no-field":
        prompts = tmp_path / "p.jsonl"
        prompts.write_text('{"question": "x"}\n', encoding="utf-8")
    elif case == "missing-model":
        model = [tmp_path / "no-such-model"]
    elif case == "not-a-model-dir":
        (tmp_path / "empty-dir").mkdir()
        model = [tmp_path / "empty-dir"]
    elif case == "not-moe":
        model = [not_moe_model]
    elif case == "bad-config-name":
        model = ["--config", "tiny-nothing"]
    elif case == "bad-batch":
        extra = ["--batch-size", 0]
    elif case == "bad-temperature":
        extra = ["--temperature", "nan"]
    out = tmp_path / "out.parquet"
    code, _, err = _run([*model, "--prompts", prompts, *extra, "-o", out, "--quiet"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err
    assert _leftovers(tmp_path) == []


def test_a_checkpoint_with_a_tokenizer_uses_it(tmp_path, capsys):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    words.train_from_iterator(PROMPTS, trainers.WordLevelTrainer(
        special_tokens=["[UNK]", "[PAD]", "</s>"]))
    model_dir = tmp_path / "tiny-mix"
    build_tiny_model("tiny-mixtral", seed=4).save_pretrained(model_dir)
    PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]", pad_token="[PAD]",
                            eos_token="</s>").save_pretrained(model_dir)
    capsys.readouterr()
    out = tmp_path / "out.parquet"
    code, _, err = _run([model_dir, "--prompts", _prompt_file(tmp_path), "--max-new-tokens", 2,
                         "-o", out, "--quiet"], capsys)
    assert code == 0, err
    trace = Trace.load(out)
    assert trace.provenance["tokenizer"] != "bytes"  # the saved tokenizer, not the fallback
    n_words = len(PROMPTS[2].replace(".", " .").split())
    assert int(((trace.request_id == 2) & (trace.phase == 0)).sum()) == n_words


def test_a_request_stops_when_it_samples_the_end_of_sequence_token(prompts):
    from moe_offload_lab.traces.record.prompts import ByteTokenizer

    model = build_tiny_model("tiny-olmoe", seed=0)
    free = recorder.record_requests(model, prompts, settings=recorder.RecordSettings(
        max_new_tokens=3, batch_size=5), progress=False)
    first = free.tokens[0][len(prompts[0].encode())]  # request 0's first generated token
    stopped = recorder.record_requests(model, prompts, ByteTokenizer(256, eos_token_id=first),
                                       recorder.RecordSettings(max_new_tokens=3, batch_size=5),
                                       progress=False)
    trace = stopped.trace
    assert int(((trace.request_id == 0) & (trace.phase == 1)).sum()) == 0
    assert stopped.tokens[0] == list(prompts[0].encode())
    for r in range(1, len(prompts)):
        if first not in free.tokens[r][len(prompts[r].encode()):]:
            assert stopped.tokens[r] == free.tokens[r]
