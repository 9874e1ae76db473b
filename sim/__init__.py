"""The SimPy discrete-event model of offloaded MoE inference (``moe-sim``).

Built in the simulator issue.
"""
