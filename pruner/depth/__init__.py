"""Block pruning: scorers (DBP probes, removal loss, L1, random) behind one protocol, the DP selection, block surgery.

Imports neither the pruning skeleton nor the width package.
"""

from .ablation import RemovalScore, removal_scores
from .adapters import fit_adapters
from .candidates import block_yield, candidates_from_profile
from .discrimination import BlockScore, pooled_features, score_blocks, score_features
from .scorers import L1Scorer, ProbeScorer, RandomScorer, RemovalScorer, Scorer, Scores
from .select import (
    Candidate,
    Selection,
    dp_solve,
    greedy_select,
    min_latency,
    predict_latency,
    select_blocks,
    select_in_order,
)
from .surgery import SurgeryError, remove_blocks, remove_more

__all__ = [
    "BlockScore",
    "Candidate",
    "L1Scorer",
    "ProbeScorer",
    "RandomScorer",
    "RemovalScore",
    "RemovalScorer",
    "Scorer",
    "Scores",
    "Selection",
    "SurgeryError",
    "block_yield",
    "candidates_from_profile",
    "dp_solve",
    "fit_adapters",
    "greedy_select",
    "min_latency",
    "pooled_features",
    "predict_latency",
    "remove_blocks",
    "remove_more",
    "removal_scores",
    "score_blocks",
    "score_features",
    "select_blocks",
    "select_in_order",
]
