"""Tensor-parallel inference on torch.distributed, applied to a built model by a plan kept apart from the model code.

plan.py     which slice of every tensor a rank holds (whole KV groups, column/row-parallel MLP, vocabulary rows)
layers.py   the modules and collectives swapped in (row-parallel partials, the one all-reduce per parallel block)
runtime.py  one rank's ops; rank 0's model announces them, the other ranks follow
driver.py   the announce / follow protocol over a CPU process group
launch.py   `open_model`: what `generate`, `evaluate` and `serve` call for --tp N under torchrun
memory.py   weights and KV cache per rank by model, precision and TP degree (`falconlm inspect --memory`)
"""

from falconlm.parallel.launch import check_launch, load_rank, open_model
from falconlm.parallel.plan import ShardPlan, check_degree
from falconlm.parallel.runtime import Rank, resident_weight_bytes

__all__ = ["ShardPlan", "Rank", "check_degree", "check_launch", "load_rank", "open_model", "resident_weight_bytes"]
