"""Inference engines: the rollout (student sampling) and teacher (prefill scoring) worker groups and their backends."""
