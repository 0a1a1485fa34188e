"""posttrain: HF-native post-training for sparse MoE language models (SFT, then cascaded OPD)."""

__version__ = "0.1.0"
