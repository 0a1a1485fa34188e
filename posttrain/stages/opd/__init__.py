"""On-policy distillation: rollout workers sample the student, teachers score its tokens, the trainer
minimises the reverse KL (see `loop.py`)."""
