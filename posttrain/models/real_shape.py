"""One decoder layer of Marco-Mini's real shape, with its real vocabulary: the card's memory paths on a CPU.

The tiny suite's models are small in every dimension, so they cannot show what the card's sizes cost:
full-vocabulary logits, a 156M-row-parameter tied embedding, the weight sync of a model that is mostly
embedding. This model has Marco-Mini's layer exactly (`posttrain.models.architectures.MARCO_MINI`: hidden
1,024, 16 q / 8 kv heads of dim 128, experts of width 768 with 8 active, tied embeddings, rope theta 1e6)
and Qwen3's vocabulary size (151,936 embedding rows), but one layer and 32 experts instead of 28 and 256:
256 experts would be ~0.6B parameters in that one layer (256 x 3 x 1,024 x 768), more than a CI machine
trains in 6 GB; with 32 the model has 237M parameters (the embedding 156M of them), ~3.8 GB of fp32
weights, gradients and Adam state.

No Qwen3 tokenizer is reachable offline: the tiny suite's tokenizer (4,096 tokens, the same special
tokens and chat template) goes with it, so embedding rows past the tokenizer are padding, as the Qwen3
checkpoints' own rows past their tokenizer are (`posttrain.stages.driver.load_tokenizer` notes it).

    posttrain tiny --real-shape --output-dir models/real_shape
"""

from __future__ import annotations

from pathlib import Path

import torch

from posttrain.models.architectures import MARCO_MINI
from posttrain.models.tiny import _special_ids, build_tokenizer, generation_config

REAL_SHAPE_EXPERTS = 32


def real_shape_config(tokenizer, experts: int = REAL_SHAPE_EXPERTS, layers: int = 1):
    from transformers import Qwen3MoeConfig

    spec = {k: v for k, v in MARCO_MINI.items() if k != "model_type"}
    spec.update(num_hidden_layers=layers, num_experts=experts, max_position_embeddings=4096,
                router_aux_loss_coef=0.001, **_special_ids(tokenizer))
    return Qwen3MoeConfig(**spec)


def build_real_shape(output_dir: str | Path, seed: int = 0, experts: int = REAL_SHAPE_EXPERTS) -> Path:
    """A randomly initialised real-shape layer (fp32) and the tiny tokenizer, saved to `output_dir`."""
    from transformers import AutoModelForCausalLM

    output_dir = Path(output_dir)
    if (output_dir / "config.json").exists():
        return output_dir
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(real_shape_config(tokenizer, experts), dtype=torch.float32)
    model.generation_config = generation_config(tokenizer)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir
