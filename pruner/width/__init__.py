"""Filter pruning after HFP: channel space on Torch-Pruning's DependencyGraph, gates, the fit,
the width-latency model, and the split of one budget between blocks and widths.

Imports neither the pruning skeleton nor the depth package.
"""

from .fit import WidthChoice, anneal, channel_ranking, check_thinnable, fit_widths
from .gates import GateRecord, Gates, Target, size_targets, train_gates
from .latency import WidthLatency, measure_width_latency, width_floor, width_yield
from .space import ChannelGroup, ChannelSpace, CostLayer, thin
from .split import BudgetSplit, split_budget

__all__ = [
    "BudgetSplit",
    "ChannelGroup",
    "ChannelSpace",
    "CostLayer",
    "GateRecord",
    "Gates",
    "Target",
    "WidthChoice",
    "WidthLatency",
    "anneal",
    "channel_ranking",
    "check_thinnable",
    "fit_widths",
    "measure_width_latency",
    "size_targets",
    "split_budget",
    "thin",
    "train_gates",
    "width_floor",
    "width_yield",
]
