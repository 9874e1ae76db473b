"""Build the bundled trace ``tiny-moe-stdlib``: train a tiny MoE LM on the CPU, then record it.

    python -m moe_offload_lab.traces.bundled.build [--steps 1200] [--seed 0] \
        [--out-dir traces/bundled]

1. Corpus: the docstrings (``ast.get_docstring`` of every module, class and function) of the
   running Python's standard library ``.py`` files, read from ``sysconfig``'s ``stdlib`` folder
   without importing anything; ``test``/``tests``, ``idlelib``, ``turtledemo``, ``lib2to3`` and
   ``site-packages`` are skipped. Modules whose relative path has ``crc32 % 10 == 0`` are held out:
   their docstrings never reach training and supply the prompts.
2. Model: ``MixtralForCausalLM`` with a byte vocabulary (256), 4 layers, hidden 128, 16 experts of
   intermediate size 256, top-2, trained with AdamW on random 128-byte windows (batch 16); loss =
   LM loss + ``router_aux_loss_coef`` (0.02) x the Switch-style load-balancing loss, so that all
   experts are used.
3. Recording: 64 held-out docstring openings (one line each, up to 160 bytes), written to
   ``tiny-moe-stdlib.prompts.txt``, recorded with :mod:`traces.record` (byte tokenizer, 64 new
   tokens sampled at temperature 0.8, batch 8, lookahead 1..2, 16 random-projection features).

Outputs (in ``--out-dir``): ``tiny-moe-stdlib.parquet``, ``tiny-moe-stdlib.config.json`` (the HF
config of the trained model), ``tiny-moe-stdlib.prompts.txt`` and ``tiny-moe-stdlib.build.json``
(corpus, training and recording figures). Weights are not kept (about 13 MB).
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import platform
import sys
import sysconfig
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

NAME = "tiny-moe-stdlib"
SKIP_DIRS = {"test", "tests", "idlelib", "turtledemo", "lib2to3", "site-packages",
             "dist-packages", "__pycache__"}
MODEL = {"vocab_size": 256, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 4,
         "num_attention_heads": 4, "num_key_value_heads": 2, "num_local_experts": 16,
         "num_experts_per_tok": 2, "max_position_embeddings": 512, "router_aux_loss_coef": 0.02,
         "pad_token_id": 0, "bos_token_id": None, "eos_token_id": None,
         "tie_word_embeddings": False}


# ---- corpus --------------------------------------------------------------------------------------
def stdlib_docstrings() -> tuple[list[str], list[str], dict[str, Any]]:
    """``(train docstrings, held-out docstrings, corpus description)``, deterministic order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    train, held, files = [], [], 0
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if SKIP_DIRS & set(rel.split("/")[:-1]):
            continue
        try:
            tree = ast.parse(path.read_bytes().decode("utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue
        files += 1
        target = held if zlib.crc32(rel.encode()) % 10 == 0 else train
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                 ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=True)
                if doc and len(doc) >= 40:
                    target.append(doc)
    info = {"source": "docstrings of the Python standard library .py files (ast.get_docstring of "
                      "modules, classes, functions)",
            "python": platform.python_version(), "files": files,
            "skipped_dirs": sorted(SKIP_DIRS),
            "held_out_rule": "module path crc32 % 10 == 0",
            "train_docstrings": len(train), "held_out_docstrings": len(held),
            "train_bytes": sum(len(d.encode()) + 2 for d in train)}
    return train, held, info


def held_out_prompts(held: list[str], count: int = 64, max_bytes: int = 160) -> list[str]:
    """``count`` one-line prompts: the opening of held-out docstrings, cut at a word boundary."""
    lines = []
    for doc in held:
        line = " ".join(doc.split("\n\n")[0].split())
        if len(line) < 60 or not line.isascii():
            continue
        if len(line) > max_bytes:
            line = line[:max_bytes].rsplit(" ", 1)[0]
        lines.append(line)
    lines = sorted(set(lines))
    step = max(1, len(lines) // count)
    return lines[::step][:count]


# ---- training ------------------------------------------------------------------------------------
def train_model(data: np.ndarray, held: np.ndarray, steps: int, seed: int, seq_len: int = 128,
                batch: int = 16, lr: float = 2e-3, progress: bool = True) -> tuple[Any, dict]:
    """Train the MoE LM on byte array ``data``; returns the model and a training report."""
    import torch
    from tqdm.auto import tqdm
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    config = MixtralConfig(**MODEL, output_router_logits=True)
    model = MixtralForCausalLM(config).float().train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    warmup = max(1, steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    def windows(source: np.ndarray, n: int, generator: np.random.Generator) -> Any:
        starts = generator.integers(0, source.size - seq_len - 1, size=n)
        return torch.from_numpy(np.stack([source[s:s + seq_len] for s in starts]).astype(
            np.int64))  # [n, seq_len]

    log, start = [], time.perf_counter()
    bar = tqdm(range(steps), desc="train", disable=not progress)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        x = windows(data, batch, rng)
        out = model(input_ids=x, labels=x)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == steps - 1:
            loss, aux = float(out.loss.detach()), float(out.aux_loss.detach())
            lm = loss - config.router_aux_loss_coef * aux
            log.append({"step": step, "loss": round(loss, 4), "lm_loss": round(lm, 4),
                        "aux_loss": round(aux, 4)})
            bar.set_postfix(lm=f"{lm:.3f}", aux=f"{aux:.3f}")
    train_s = time.perf_counter() - start
    model.eval()
    model.config.output_router_logits = False
    eval_rng = np.random.default_rng(seed + 1)
    with torch.inference_mode():
        held_losses = []
        for _ in range(8):
            x = windows(held, 16, eval_rng)
            held_losses.append(float(model(input_ids=x, labels=x, output_router_logits=False)
                                     .loss))
    held_loss = float(np.mean(held_losses))
    report = {"steps": steps, "seed": seed, "batch": batch, "seq_len": seq_len,
              "optimizer": "AdamW(betas=(0.9, 0.95), weight_decay=0.01), grad clip 1.0",
              "lr": f"{lr} peak, linear warmup {warmup} steps, cosine decay",
              "train_seconds": round(train_s, 1), "threads": torch.get_num_threads(),
              "final_lm_loss_nats_per_byte": log[-1]["lm_loss"],
              "final_aux_loss": log[-1]["aux_loss"],
              "held_out_lm_loss_nats_per_byte": round(held_loss, 4),
              "held_out_bits_per_byte": round(held_loss / math.log(2), 4),
              "log": log}
    return model, report


# ---- driver --------------------------------------------------------------------------------------
def _write_json(path: Path, value: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(value, handle, indent=1, sort_keys=True)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build(out_dir: Path, steps: int = 1000, seed: int = 0, threads: int | None = None,
          progress: bool = True) -> dict[str, Any]:
    """Run the whole build; returns the build report (also written next to the trace)."""
    import torch
    import transformers
    from moe_offload_lab.traces.record.prompts import ByteTokenizer
    from moe_offload_lab.traces.record.recorder import RecordSettings, record_requests

    if threads:
        torch.set_num_threads(threads)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    train_docs, held_docs, corpus = stdlib_docstrings()
    data = np.frombuffer("\n\n".join(train_docs).encode("utf-8"), dtype=np.uint8)
    held = np.frombuffer("\n\n".join(held_docs).encode("utf-8"), dtype=np.uint8)
    prompts = held_out_prompts(held_docs)
    prompts_path = out_dir / f"{NAME}.prompts.txt"
    fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write("\n".join(prompts) + "\n")
    os.replace(tmp, prompts_path)

    model, training = train_model(data, held, steps, seed, progress=progress)
    settings = RecordSettings(max_new_tokens=64, batch_size=8, lookahead=2, features=16,
                              feature_seed=seed, temperature=0.8, seed=seed)
    from moe_offload_lab.traces.record.prompts import load_prompts

    loaded = load_prompts(prompts_path)  # exactly what the CLI would read
    t1 = time.perf_counter()
    recording = record_requests(
        model, loaded, ByteTokenizer(256), settings, model_name=NAME, progress=progress,
        provenance={"dataset": {"name": "python-stdlib-docstrings", "prompts_file":
                                prompts_path.name, "prompts": len(loaded),
                                "held_out": corpus["held_out_rule"],
                                "python": corpus["python"]},
                    "training": {k: v for k, v in training.items() if k != "log"},
                    "builder": "moe_offload_lab.traces.bundled.build"})
    record_s = time.perf_counter() - t1
    trace = recording.trace
    trace_path = trace.save(out_dir / f"{NAME}.parquet")
    config = model.config.to_dict()
    config.pop("_name_or_path", None)
    _write_json(out_dir / f"{NAME}.config.json", config)
    load = np.bincount(trace.expert_ids.reshape(-1).astype(np.int64),
                       minlength=trace.spec.num_experts) / trace.expert_ids.size
    report = {"name": NAME, "corpus": corpus, "model": MODEL, "training": training,
              "recording": {"settings": settings.__dict__, "tokens": trace.num_tokens,
                            "decode_tokens": int(trace.phase.sum()),
                            "requests": len(loaded), "seconds": round(record_s, 1),
                            "expert_share_all_layers": [round(float(v), 4) for v in load],
                            "file_bytes": trace_path.stat().st_size},
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                           "python": platform.python_version()},
              "total_seconds": round(time.perf_counter() - t0, 1)}
    _write_json(out_dir / f"{NAME}.build.json", report)
    for path in out_dir.glob(f"{NAME}.*"):  # temporary files are created private; ship readable
        path.chmod(0o644)
    return report


def main(argv: list[str] | None = None) -> int:
    """Command line of the build (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m moe_offload_lab.traces.bundled.build",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.steps < 1:
        print("build: error: --steps must be at least 1", file=sys.stderr)
        return 2
    report = build(args.out_dir, args.steps, args.seed, args.threads, progress=not args.quiet)
    t = report["training"]
    print(f"trained {t['steps']} steps in {t['train_seconds']} s: final LM loss "
          f"{t['final_lm_loss_nats_per_byte']} nats/byte, held-out "
          f"{t['held_out_bits_per_byte']} bits/byte; recorded {report['recording']['tokens']} "
          f"tokens to {NAME}.parquet ({report['recording']['file_bytes']} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
