"""The hf rollout's decode loop: KV-cached sampling that returns each token's sampler log-prob.

Why not `model.generate`: it draws with `torch.multinomial`, which on a CPU cost 1.4 ms per decode
step for a [32, 2,816] batch — a quarter of the tiny rollout (docs/performance.md) — and it merges
whatever the checkpoint's `generation_config.json` adds (repetition penalty, top-k, ...) into the
distribution, while OPD's importance ratio needs the sampler's distribution to be exactly the one
the config names. So the loop is written out: transformers' own `TemperatureLogitsWarper` and
`TopPLogitsWarper` shape the logits (the same processing `generate` applies for these settings),
and the draw is by inverse CDF: one uniform number per row against the float64 cumulative sum of p
(0.13 ms for that batch). The cost on a CPU is the random numbers: the Gumbel/exponential race that
GPU samplers use needs one per vocabulary entry and measured as slow as `multinomial` here.
"""

from __future__ import annotations

import inspect

import torch


def draw(logp_BV: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row from the distribution exp(logp_BV), by inverse CDF. A token of probability 0
    (cut by top-p) is never drawn: its cumulative sum equals its predecessor's, and the first entry
    strictly above u·total is taken."""
    cdf_BV = logp_BV.double().exp().cumsum(dim=-1)
    u_B1 = torch.rand((logp_BV.shape[0], 1), generator=generator, dtype=torch.float64, device=logp_BV.device)
    token_B = torch.searchsorted(cdf_BV, u_B1 * cdf_BV[:, -1:], right=True)[:, 0]
    return token_B.clamp_max(logp_BV.shape[-1] - 1)


@torch.no_grad()
def sample(model, input_ids_BP: torch.Tensor, attention_mask_BP: torch.Tensor, max_new_tokens: int,
           eos_ids: list[int], pad_id: int, temperature: float = 1.0, top_p: float = 1.0, greedy: bool = False,
           generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompts [B, P] → (new tokens [B, N], their log-probs under the distribution drawn
    from [B, N]); N ≤ max_new_tokens. After a row's end token it holds `pad_id` (log-prob 0).
    `greedy`: argmax of the untempered logits, log-probs of the plain softmax (evaluation)."""
    from transformers import DynamicCache
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    warpers = [] if greedy else [w for w in (TemperatureLogitsWarper(temperature) if temperature != 1.0 else None,
                                             TopPLogitsWarper(top_p) if top_p < 1.0 else None) if w is not None]
    B = input_ids_BP.shape[0]
    eos = torch.tensor(sorted(eos_ids), device=input_ids_BP.device)
    # transformers renamed `past_key_values` to `cache` during 5.x; pass it under the name this version takes.
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    cache = {cache_kw: DynamicCache(config=model.config)}
    mask_BT = attention_mask_BP
    position_B1 = (mask_BT.cumsum(-1) - 1).clamp_min(0)  # left padding: every prompt's first real token is 0
    logits_BV = model(input_ids=input_ids_BP, attention_mask=mask_BT, position_ids=position_B1, **cache,
                      use_cache=True, logits_to_keep=1).logits[:, -1]
    position_B1 = position_B1[:, -1:]
    done_B = torch.zeros(B, dtype=torch.bool, device=input_ids_BP.device)
    tokens, logps = [], []
    for _ in range(max_new_tokens):
        scores_BV = logits_BV.float()
        for warp in warpers:
            scores_BV = warp(None, scores_BV)
        logp_BV = torch.log_softmax(scores_BV, dim=-1)
        token_B = logp_BV.argmax(dim=-1) if greedy else draw(logp_BV, generator)
        token_B = token_B.masked_fill(done_B, pad_id)
        tokens.append(token_B)
        logps.append(logp_BV.gather(-1, token_B[:, None])[:, 0].masked_fill(done_B, 0.0))
        done_B = done_B | torch.isin(token_B, eos)
        if bool(done_B.all()):
            break
        mask_BT = torch.cat([mask_BT, torch.ones_like(mask_BT[:, :1])], dim=1)
        position_B1 = position_B1 + 1
        logits_BV = model(input_ids=token_B[:, None], attention_mask=mask_BT, position_ids=position_B1, **cache,
                          use_cache=True).logits[:, -1]
    return torch.stack(tokens, dim=1), torch.stack(logps, dim=1)
