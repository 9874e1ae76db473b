"""Synthetic routing traces from a hidden-state model of a MoE transformer.

Real routers are linear maps applied to a hidden state that drifts a little from block to block
(the residual stream) and from token to token; gate lookahead applies a later router to an
earlier state, and learned predictors read compressed hidden states. The generator simulates that
state directly, so routing, lookahead columns and features come out of one consistent model.

Per token ``t`` of request ``q`` and MoE layer ``l`` (``D`` = ``state.dim``, all vectors in R^D):

1. **State.** ``h[t,l] = sqrt(a) r_q + sqrt(1-a) x[t,l]`` with ``r_q ~ N(0, I)`` drawn once per
   request (``a`` = ``state.request_share``: request-level locality, MoE-Infinity's observation
   that a request touches a subset of the experts) and a token part that is AR(1) across layers,
   ``x[t,0] = z[t,0]``, ``x[t,l] = rho_l x[t,l-1] + sqrt(1-rho_l^2) z[t,l]``
   (``rho_l`` = layer persistence), whose innovations are AR(1) across the tokens of a request,
   ``z[t,l] = phi_l z[t-1,l] + sqrt(1-phi_l^2) n[t,l]`` (``phi_l`` = ``state.token_persistence``:
   adjacent tokens have similar states; a request starts from a fresh stationary draw). Every
   ``h[t,l]`` is N(0, I) on its own, so the dynamics never change a layer's popularity.
2. **Routing.** Layer ``l``'s router has unit rows ``w[l,e]`` and biases ``b[l,e]``: logits
   ``w[l,e] . h[t,l] + b[l,e] + sigma_l eps[t,l,e]`` (``sigma_l`` = ``router.noise``: the part of
   a real router's input the D-dimensional state does not carry); the top-k logits are the routed
   experts, largest first. The biases are a power law over a random ranking,
   ``-alpha_l log(rank)``, with ``alpha`` moving from ``popularity.alpha_first`` to
   ``alpha_last`` (or fitted biases from ``structure.file``).
3. **Gates.** Softmax of the logits at ``router.temperature``, over the chosen k (``gates:
   topk``, weights sum to 1) or over all experts (``gates: all``, the top-k shares as FLAME and
   DeepSeek-style routers report them).
4. **Lookahead** at distance ``d``: the top-k of the router of layer ``l + d`` applied to
   ``h[t,l]`` (without the noise), the same thing a recorder does with a real model. Its accuracy
   therefore follows from ``rho``, the request share and the noise; a preset may instead give the
   next-layer accuracy (``lookahead.accuracy``) and ``rho_l`` is solved to match it
   (:mod:`traces.synth.structure`).
5. **Features** (``features.width`` F <= D): the first F coordinates of ``h[t,l]`` (plus
   ``features.noise``), float16 -- the state the routers read, as a recorder's random projection
   of a real hidden state would give it.

Cross-layer structure (Prophet's observation that a token's experts at one layer predict the
next) comes from the persistent state: experts whose router rows point the same way at
consecutive layers follow each other. Temporal reuse comes from ``phi`` and the request share.
A preset's ``structure_seed`` stands for the model (router rows, bias ranking); ``seed`` draws
new requests routed by the same model.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
from moe_offload_lab.traces.errors import ConfigError
from moe_offload_lab.traces.format import DECODE, NO_EXPERT, PREFILL, Trace
from moe_offload_lab.traces.synth.config import SynthConfig
from moe_offload_lab.traces.synth.structure import Structure, build_structure

_BLOCK_CELLS = 1 << 20  # tokens x layers x max(k, F) per kernel call (progress granularity)


def _request_layout(
    cfg: SynthConfig, rng: np.random.Generator, requests: int | None, tokens: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Prompt and decode lengths per request; with ``tokens`` the total is exactly that."""
    if tokens is None:
        n = cfg.requests if requests is None else requests
        return cfg.prompt_tokens.sample(rng, n), cfg.decode_tokens.sample(rng, n)
    prompts, decodes = [], []
    total = 0
    while total < tokens:
        p, d = cfg.prompt_tokens.sample(rng, 256), cfg.decode_tokens.sample(rng, 256)
        prompts.append(p)
        decodes.append(d)
        total += int((p + d).sum())
    prompt, decode = np.concatenate(prompts), np.concatenate(decodes)
    ends = np.cumsum(prompt + decode)
    last = int(np.searchsorted(ends, tokens))  # the request in which the total is reached
    prompt, decode = prompt[: last + 1].copy(), decode[: last + 1].copy()
    excess = int(ends[last]) - tokens
    cut_decode = min(excess, int(decode[last]))
    decode[last] -= cut_decode
    prompt[last] -= excess - cut_decode
    return prompt, decode


def _token_rows(prompt: np.ndarray, decode: np.ndarray) -> tuple[np.ndarray, ...]:
    lengths = prompt + decode  # [R]
    keep = lengths > 0
    prompt, lengths = prompt[keep], lengths[keep]
    request_id = np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)  # [T]
    starts = np.cumsum(lengths) - lengths
    position = (np.arange(int(lengths.sum())) - np.repeat(starts, lengths)).astype(np.int32)  # [T]
    phase = np.where(position < np.repeat(prompt, lengths), PREFILL, DECODE).astype(np.int8)
    return request_id, position, phase


def _feature_width(cfg: SynthConfig, features: bool | int | None) -> int:
    if features is None or features is True:
        return cfg.features_width
    if features is False:
        return 0
    if isinstance(features, bool) or not isinstance(features, (int, np.integer)) or features < 0:
        raise ConfigError(f"features must be a width >= 0, got {features!r}")
    if features > cfg.state_dim:
        raise ConfigError(f"features: width {features} exceeds the preset's state.dim "
                          f"{cfg.state_dim} (features are coordinates of the hidden state)")
    return int(features)


def generate(
    config: SynthConfig | str,
    *,
    requests: int | None = None,
    tokens: int | None = None,
    seed: int = 0,
    progress: bool = False,
    features: bool | int | None = None,
) -> Trace:
    """Generate a trace from a preset name (or preset YAML path) or a :class:`SynthConfig`.

    ``requests`` overrides the preset's request count; ``tokens`` instead generates requests until
    exactly that many tokens exist (the last request is cut short). ``features``: ``None`` or
    ``True`` emits the preset's ``features.width`` feature columns, ``False`` or 0 none, an
    integer that width. Deterministic per seed.
    """
    cfg = SynthConfig.preset(config) if isinstance(config, str) else config
    if requests is not None and tokens is not None:
        raise ConfigError("give either a number of requests or a number of tokens, not both")
    if (requests is not None and requests < 1) or (tokens is not None and tokens < 1):
        raise ConfigError("the number of requests or tokens must be at least 1")
    width = _feature_width(cfg, features)
    spec = cfg.model_spec()
    structure = build_structure(cfg, spec)
    rng = np.random.default_rng([seed, 0xDA7A])

    prompt, decode = _request_layout(cfg, rng, requests, tokens)
    request_id, position, phase = _token_rows(prompt, decode)
    n_tokens, n_layers, k = request_id.shape[0], spec.num_moe_layers, spec.top_k
    if n_tokens == 0:
        raise ConfigError(
            "the length distributions produced no tokens; raise prompt or decode lengths"
        )
    n_look = cfg.lookahead_distances
    expert_ids = np.empty((n_tokens, n_layers, k), dtype=np.int16)  # [T, L, k]
    gate_weights = np.empty((n_tokens, n_layers, k), dtype=np.float32)  # [T, L, k]
    ahead = np.full((n_look, n_tokens, n_layers, k), NO_EXPERT, dtype=np.int16)  # [d, T, L, k]
    feats = np.empty((n_tokens, n_layers, width), dtype=np.float16) if width else None
    _route_all(structure, request_id, rng, expert_ids, gate_weights, ahead, feats, width,
               cfg.features_noise, progress)
    return Trace(spec, request_id, position, phase, expert_ids, gate_weights,
                 {d: ahead[d - 1] for d in range(1, n_look + 1)}, feats,
                 provenance=_provenance(cfg, structure, seed, requests, tokens, width))


def _route_all(structure: Structure, request_id: np.ndarray, rng: np.random.Generator,
               expert_ids: np.ndarray, gate_weights: np.ndarray, ahead: np.ndarray,
               feats: np.ndarray | None, width: int, feature_noise: float,
               progress: bool) -> None:
    """Fill the output arrays block by block (the kernel carries each request's state)."""
    from moe_offload_lab.traces.synth import kernels  # numba: loaded when a trace is made

    n_tokens, n_layers, k = expert_ids.shape
    dim = structure.router.shape[2]
    z = np.zeros((n_layers, dim))  # [L, D] the previous token's innovations
    r = np.zeros(dim)  # [D] its request vector
    carry = np.int64(-(2**40))  # no request yet: below every int32 request id
    block = max(1, _BLOCK_CELLS // (n_layers * max(k, width, 1)))
    starts = range(0, n_tokens, block)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="synth", unit="block")
    buffer = np.empty((min(block, n_tokens), n_layers, width), np.float32)  # [b, L, F]
    for lo in starts:
        hi = min(lo + block, n_tokens)
        out_feat = buffer[: hi - lo]
        carry = kernels.route_tokens(
            structure.router, structure.bias, structure.noise, structure.layer_persistence,
            structure.token_persistence, structure.request_share, structure.inv_temperature,
            structure.gates_all, request_id[lo:hi], int(rng.integers(2**63)), z, r, carry,
            expert_ids[lo:hi], gate_weights[lo:hi], ahead[:, lo:hi], out_feat, feature_noise,
            kernels.GAUSS)
        if feats is not None:
            feats[lo:hi] = out_feat


def _provenance(cfg: SynthConfig, structure: Structure, seed: int, requests: int | None,
                tokens: int | None, width: int) -> dict:
    expected = structure.lookahead_expected
    out = {
        "source": "synthetic",
        "generator": "moe_offload_lab.traces.synth",
        "preset": cfg.name or None,
        "seed": seed,
        "requests_arg": requests,
        "tokens_arg": tokens,
        "config": cfg.to_dict(),
        # what the gate-lookahead columns are expected to reach (the configured target where the
        # model can reach it), per distance and target layer
        "lookahead_accuracy_target": {
            str(d): [None if np.isnan(a) else round(float(a), 6) for a in expected[d - 1]]
            for d in range(1, expected.shape[0] + 1)
        },
        "layer_persistence": [round(float(v), 6) for v in structure.layer_persistence],
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    if width:
        out["features"] = {"method": "the first F coordinates of the generator's latent "
                                     "hidden state (what the routers read), float16",
                           "width": width, "noise": cfg.features_noise}
    return out
