"""Supervised fine-tuning (full weights or LoRA) on chat/instruction data, reusing the pretraining loop."""
