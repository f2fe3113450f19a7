"""Allocation of a budget (MACs, parameters, latency) across channel groups.

``knapsack`` is the solver every allocator shares: given, per group, a few
options (a kept width with its cost and predicted loss), it picks one option
per group that minimises the summed loss under the budget.
"""

from .knapsack import Option, solve, solve_exact

__all__ = ["Option", "solve", "solve_exact"]
