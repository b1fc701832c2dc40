"""Errors the pruner's packages share (torch-free)."""


class BudgetError(ValueError):
    """The budget cannot be met: below what removing blocks or thinning channels can reach."""


class WidthUnsupported(ValueError):
    """Filter pruning cannot follow this model's channels (its dependency graph fails)."""
