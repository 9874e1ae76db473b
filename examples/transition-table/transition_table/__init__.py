"""An out-of-tree policy component for moe-offload-lab: a transition-table predictor.

Use it by import path (``_target_: transition_table.TransitionTablePredictor``, with this folder
on ``PYTHONPATH``) or, once the package is installed, by the name its entry point registers
(``name: transition-table``). See README.md beside this package.
"""

from transition_table.predictor import TransitionTablePredictor

__all__ = ["TransitionTablePredictor"]
