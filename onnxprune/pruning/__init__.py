"""The pruning verb: prepare a model, score, schedule and select units, run the passes, sweep budgets.

The package is the verb's home beside :mod:`onnxprune.sparsity`; its public entry points are re-exported
from :mod:`onnxprune` (this __init__ imports nothing, so lower layers may import a module of it freely).
"""
