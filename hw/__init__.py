"""The real offloading executor in torch, calibration and sim-vs-hardware validation (``moe-hw``).

Built in the executor issue.
"""
