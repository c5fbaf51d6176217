"""The RefinedWeb refinement pipeline. This package must never import torch."""
