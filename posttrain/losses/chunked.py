"""A loss over hidden states, one chunk of target positions at a time: full-vocabulary logits never
exist for a whole row.

At Qwen3's vocabulary (151,936) the fp32 logits of one 8,192-token row are 5 GB, and a loss's
intermediates (the log-softmax, the logits' gradient) about triple that. Here the trainer hands over
the last hidden states at the positions that carry a target only, and for each chunk of
`chunk_tokens` of them the LM head and `loss.fn` run on that chunk alone; `torch.utils.checkpoint`
(non-reentrant) drops the chunk's logits after its forward and recomputes them in backward. The
loss's working set is one chunk's logits and their gradient, whatever the row length
(`benchmarks/loss_memory.py` measures it), for any loss written to the `posttrain.losses` contract:
`loss.fn` is called per chunk and its loss and metrics are summed over the chunks.

The head is called as a module, never read as `.weight`: under ZeRO-3 DeepSpeed gathers a module's
partitioned weight in its forward hook (again when the chunk is recomputed in backward), and with tied
embeddings the head's weight is the embedding. Each call is a collective there, so ZeRO-3 ranks must
make the same number of calls: `num_chunks` pads a rank's chunks with empty ones.

The head's weight gradient is [V, H] (0.62 GB at the card's vocabulary and hidden size). Autograd
makes a new one per chunk and sums them, with the embedding's own, in buffers of that size: measured
on the real layer shape, three such tensors at once during backward. Where nothing but `.grad` reads
the gradient (`head_grad_in_place`: ZeRO stage 0 in fp32, the head's weight whole on this rank, no hook
on it), each chunk's backward adds its share into `weight.grad` in place instead (`HeadInPlace`, Liger's
approach): no [V, H] temporary beyond `.grad`. With tied embeddings the embedding's own gradient is
then taken sparse (`sparse_tied_embedding_grad`: the rows the micro-batch's tokens touched, added into
that dense `.grad`), not as another dense [V, H] tensor.

On CUDA, where Liger-Kernel is installed, the plain NLL (SFT) goes through its fused linear +
cross-entropy Triton kernel instead (it reads the head's weight, so only where that weight is whole).
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field

import torch
from torch.utils.checkpoint import checkpoint

from posttrain.losses.tokens import nll


@dataclass
class LossTotals:
    """A loss summed over target tokens (with its graph) and the loss's metrics summed likewise."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


# Model settings that change the logits after the LM head (Gemma's soft-capping, Cohere's and Granite's
# scaling): the chunked loss computes logits as head(last hidden state), so it refuses these models.
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def decoder_and_head(module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The decoder (whose output is the last hidden state) and the LM head of a causal LM, through a
    peft wrapper where LoRA is on; the head is the module (the tied embedding's weight with tied embeddings)."""
    model = module.get_base_model() if hasattr(module, "get_base_model") else module
    config = model.config
    transforms = [name for name in LOGIT_TRANSFORMS if getattr(config, name, None) not in (None, 1, 1.0)]
    if transforms:
        raise ValueError(f"{config.model_type}: its logits are not lm_head(hidden) alone ({', '.join(transforms)} set); "
                         "posttrain's chunked loss computes them so and does not support this model")
    return model.get_decoder(), model.get_output_embeddings()


class HeadInPlace(torch.autograd.Function):
    """logits = hidden @ weight.T, whose backward adds the weight's gradient into `weight.grad` in place
    and hands autograd none for it.

    Written by hand because autograd has no way to say "accumulate this parameter's gradient where it
    already lives": every use returns a fresh [V, H] gradient that autograd then sums. Only correct where
    `.grad` is all that reads the gradient — no hook on the parameter (ZeRO 1-3 and DeepSpeed's bf16
    optimizer register one), and the caller checks that (`head_grad_in_place`).
    """

    @staticmethod
    def forward(ctx, hidden_CH: torch.Tensor, weight_VH: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(hidden_CH)
        ctx.weight = weight_VH  # the parameter itself: its .grad is written in backward
        return hidden_CH @ weight_VH.T

    @staticmethod
    def backward(ctx, grad_logits_CV: torch.Tensor):
        (hidden_CH,) = ctx.saved_tensors
        weight_VH = ctx.weight
        if ctx.needs_input_grad[1]:
            with torch.no_grad():
                if weight_VH.grad is None:
                    weight_VH.grad = grad_logits_CV.T @ hidden_CH
                else:
                    weight_VH.grad.addmm_(grad_logits_CV.T, hidden_CH)
        grad_hidden_CH = grad_logits_CV @ weight_VH if ctx.needs_input_grad[0] else None
        return grad_hidden_CH, None


def head_grad_in_place(head: torch.nn.Module, zero_stage: int, bf16: bool) -> bool:
    """Whether `chunked_loss` may add the head's weight gradient into `.grad` itself (`HeadInPlace`): the
    head a plain bias-free nn.Linear whose weight trains, at ZeRO stage 0 without DeepSpeed's bf16
    optimizer (the only engine that puts no hook on a parameter's gradient: it reads `.grad` after
    backward), and the weight carrying no hook of anyone else's."""
    weight = getattr(head, "weight", None)
    return (zero_stage == 0 and not bf16 and type(head) is torch.nn.Linear and head.bias is None
            and weight is not None and weight.requires_grad and not getattr(weight, "_backward_hooks", None)
            and not getattr(weight, "_post_accumulate_grad_hooks", None))


def sparse_tied_embedding_grad(model: torch.nn.Module, head: torch.nn.Module) -> bool:
    """Where the head's gradient goes into `.grad` in place and the input embedding is the head's weight:
    make the embedding's backward return its gradient sparse (the rows of the row's tokens) instead of a
    dense [V, H] of zeros with those rows filled. `.grad` is then always the dense tensor `HeadInPlace`
    made first (chunked_loss makes it when a micro-batch has no target), and autograd adds the sparse rows
    into it in place. True where it was switched on."""
    embedding = model.get_input_embeddings()
    if type(embedding) is not torch.nn.Embedding or embedding.weight is not getattr(head, "weight", None):
        return False
    embedding.sparse = True
    return True


def chunked_loss(hidden_NH: torch.Tensor, head: torch.nn.Module, targets_N: torch.Tensor, loss, cfg,
                 inputs: dict[str, torch.Tensor], chunk_tokens: int, num_chunks: int | None = None,
                 grad_in_place: bool = False) -> LossTotals:
    """`loss` (a `posttrain.losses.Loss`) summed over the N target positions whose last hidden states are
    `hidden_NH`, with logits = head(hidden) computed `chunk_tokens` positions at a time.

    `num_chunks` (at least the chunks N needs) makes exactly that many head calls, the extra ones empty.
    `grad_in_place` (only where `head_grad_in_place` says so): the head's weight gradient goes straight
    into its `.grad` during backward (`HeadInPlace`) — `.grad` then holds it, not the autograd graph.
    """
    n = hidden_NH.shape[0]
    needed = math.ceil(n / chunk_tokens)
    num_chunks = needed if num_chunks is None else num_chunks
    if num_chunks < needed:
        raise ValueError(f"num_chunks={num_chunks} is fewer than the {needed} chunks of {chunk_tokens} that {n} targets need")
    names = tuple(inputs)

    project = (lambda hidden_CH: HeadInPlace.apply(hidden_CH, head.weight)) if grad_in_place else head
    if grad_in_place and num_chunks == 0 and head.weight.grad is None:
        # No head call adds to `.grad` here; a sparse embedding gradient must still land in a dense one.
        head.weight.grad = torch.zeros_like(head.weight)

    def one_chunk(hidden_CH, targets_C, *values):
        out = loss.fn(project(hidden_CH), targets_C, cfg, **dict(zip(names, values)))
        loss_C, metrics = out if isinstance(out, tuple) else (out, {})
        return loss_C.sum(), {name: values_C.detach().sum() for name, values_C in metrics.items()}

    total = LossTotals(hidden_NH.new_zeros((), dtype=torch.float32))
    for i in range(num_chunks):
        part = slice(min(i * chunk_tokens, n), min((i + 1) * chunk_tokens, n))
        loss_sum, metrics = checkpoint(one_chunk, hidden_NH[part], targets_N[part],
                                       *(inputs[name][part] for name in names), use_reentrant=False)
        total.loss = total.loss + loss_sum
        for name, value in metrics.items():
            total.metrics[name] = total.metrics.get(name, 0.0) + value
    return total


def fused_nll_kernel(head: torch.nn.Module, loss, device: torch.device, weights_partitioned: bool):
    """Liger-Kernel's fused linear + cross-entropy (reduction "sum") where it applies, else None.

    It applies to the plain NLL only (a kernel for one loss, not the per-token contract), on CUDA
    (Triton), with Liger installed, and with the head a plain nn.Linear whose weight is whole on this
    rank (not ZeRO-3-partitioned, not a LoRA-wrapped head): the kernel takes the weight tensor itself.
    """
    if (loss.fn is not nll or device.type != "cuda" or weights_partitioned or type(head) is not torch.nn.Linear
            or head.bias is not None or importlib.util.find_spec("liger_kernel") is None):
        return None
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    fused = LigerFusedLinearCrossEntropyLoss(reduction="sum")

    def fused_nll(hidden_NH: torch.Tensor, targets_N: torch.Tensor) -> LossTotals:
        if targets_N.numel() == 0:  # a rank's empty placeholder micro-batch: Liger divides by its BT = 0
            return LossTotals(hidden_NH.new_zeros((), dtype=torch.float32))
        return LossTotals(fused(head.weight, hidden_NH, targets_N).float())

    return fused_nll
