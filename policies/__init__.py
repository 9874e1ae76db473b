"""Expert prediction, prefetch planning, cache replacement and CPU/GPU placement policies.

One policy object runs unchanged in the simulator (``sim``) and the real executor (``hw``); this
package therefore never imports either of them. The engine-facing contract is
:class:`policies.base.Policy` (its module docstring gives the call order); the standard
implementation is :class:`policies.composed.ComposedPolicy`, built from ``conf/policy/*.yaml`` by
:func:`load_policy`. Keys are ints ``layer * num_experts + expert`` (:mod:`policies.keys`).
"""

from moe_offload_lab.policies.base import CPU, GPU, FetchPlan, Policy
from moe_offload_lab.policies.cache import CacheView, SlotCache
from moe_offload_lab.policies.config import (
    PolicyConfig,
    available_policies,
    build_policy,
    load_policy_config,
    policy_config,
)
from moe_offload_lab.policies.context import LayerContext
from moe_offload_lab.policies.cost import CostModel, DecisionCost
from moe_offload_lab.policies.keys import key_expert, key_layer, make_key, split_key
from moe_offload_lab.policies.prediction import Prediction


def load_policy(name_or_path: str):  # noqa: ANN201 - ComposedPolicy, imported lazily
    """Build the policy of ``conf/policy/<name>.yaml`` (or of a YAML file path)."""
    return build_policy(name_or_path)


__all__ = [
    "CPU", "GPU", "CacheView", "CostModel", "DecisionCost", "FetchPlan", "LayerContext", "Policy",
    "PolicyConfig", "Prediction", "SlotCache", "available_policies", "build_policy",
    "key_expert", "key_layer", "load_policy", "load_policy_config", "make_key", "policy_config",
    "split_key",
]
