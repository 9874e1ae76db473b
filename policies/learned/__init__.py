"""Learned expert predictors (Prophet, PreScope's LLaPor, PROBE, ProMoE styles, baselines).

Small torch models that predict, from a token's routing history or its compressed hidden state
at MoE layer ``l``, which experts layers ``l + 1 .. l + h`` will route it to (sigmoid multi-label
over the experts, one row per distance). Layout, one job per module:

- ``data``: examples from traces (numpy), the split BY REQUEST into train/validation/test;
- ``features``: the per-layer feature standardiser with optional PCA (a torch module);
- ``models`` (``base``, ``history_transformer``, ``layer_aware``, ``gate_lookahead``,
  ``promoe``, ``baselines``): the networks, all ``forward(layer, history, features) -> logits``;
- ``train``: the training loop (pos_weight, early stopping, seeds, tqdm);
- ``checkpoint``: atomic save/load of ``model.pt`` + ``model.json`` (metadata);
- ``timing``: inference cost at batch 1 and 32 and the fitted :class:`DecisionCost`;
- ``predictor``: the registered ``learned`` predictor (policy integration);
- ``evaluate``: precision/recall/top-k, calibration, transfer, heuristic comparison;
- ``cli``: ``moe-train`` (a Hydra app over ``conf/train``).

This ``__init__`` imports nothing heavy: the policy registry imports ``predictor`` (which loads
torch only when a ``learned`` predictor is built).
"""
