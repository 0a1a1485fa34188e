"""The arms of `benchmarks/distill_quality.py`: the table's, and the lab log's variants (every option tried).

An arm is a kind (opd: `run_opd` from the student start; seqkd: SFT on the teacher's greedy answers;
sft: SFT on the ground truth) and `key=value` overrides of the stage's config on top of the benchmark's
(configs/tiny/opd.yaml at the card's schedule, lr 1e-3 constant, and shape, 32 prompts x 2 samples; responses
<= 32 tokens, grad clip 1.0).
Every arm spends the same total FLOPs: an OPD arm's step count follows from its prompts x samples shape.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Arm:
    key: str  # its run directory under WORK_DIR/arms
    label: str
    kind: str  # opd | seqkd | sft
    overrides: tuple[str, ...] = ()


CARD = ("loss.mode=sampled",)
# The schedule that moved every dense mode most (lab log, 2026-12-02): the tiny config's since then.
SCHEDULE = ("optim.lr=3e-3", "optim.warmup_steps=10", "optim.schedule=cosine", "optim.min_lr=3e-4")
# What OPDConfig and the shipped tiny config default to: the best of the measured OPD runs by mean gap closed
# (the forward KL over the teacher's top-k, at SCHEDULE: 2026-12-02, 24 OPD runs; docs/distillation_quality.md).
# A rerun that finds another best says so on the page ("Measured best"); this constant then follows the data.
RECOMMENDED = "opd_forward"
FORWARD = ("loss.mode=topk_jsd", "loss.beta=0")

ARMS = [
    Arm("seqkd", "(b) sequence-level KD", "seqkd"),
    Arm("opd_sampled", "(c) OPD sampled-token reverse KL (the card's mode and schedule)", "opd", CARD),
    Arm(RECOMMENDED, "(d) OPD recommended, the default: forward KL over the top-20 (topk_jsd, beta 0), warm-up + cosine",
        "opd", (*FORWARD, *SCHEDULE)),
    Arm("opd_reverse", "(e) OPD reverse KL, its best estimator: topk_sampled, warm-up + cosine", "opd",
        ("loss.mode=topk_sampled", *SCHEDULE)),
    Arm("sft_truth", "(r) SFT on ground truth (reference)", "sft"),
]


def sampled(key: str, label: str, *overrides: str) -> Arm:
    return Arm(f"v_sampled_{key}", f"sampled-token, {label}", "opd", (*CARD, *overrides))


def forward(prompts: int, why: str = "", seed: int = 0) -> Arm:
    """The recommended forward KL at SCHEDULE, `prompts` x 2 per step (at the same FLOPs, fewer prompts
    make more, smaller steps), its rollouts sampled with `seed`; `why` follows what it varies."""
    shape = f"{prompts} prompts x 2" if prompts != 32 else ""
    parts = ["topk_jsd, beta 0", f"{shape} {why}".strip() if shape else "", "lr 3e-3, warm-up 10, cosine to 3e-4",
             f"seed {seed} {'' if shape else why}".strip() if seed else ""]
    overrides = (*FORWARD, *([f"rollout.prompts_per_step={prompts}"] if shape else []), *SCHEDULE,
                 *([f"trainer.seed={seed}"] if seed else []))
    key = "v_forward_cosine" + (f"_{prompts}x2" if shape else "") + (f"_seed{seed}" if seed else "")
    return Arm(key, ", ".join(filter(None, parts)), "opd", overrides)


# The levers the OPD literature and the peers use, each alone on top of the card's mode, then the dense modes.
VARIANTS = [
    sampled("warmup", "lr warm-up 20 steps", "optim.warmup_steps=20"),
    sampled("lr3e-4", "lr 3e-4", "optim.lr=3e-4"),
    sampled("noclip", "no gradient clipping", "optim.grad_clip=0"),
    sampled("batchmean", "batch-mean baseline, normalised (GRPO-style, per token)", "loss.baseline=batch_mean",
            "loss.normalize_advantages=true"),
    sampled("4samples", "16 prompts x 4 samples, leave-one-out baseline", "rollout.prompts_per_step=16",
            "rollout.samples_per_prompt=4", "loss.baseline=prompt_mean"),
    sampled("bigbatch", "4x token batch (128 prompts x 2), a quarter of the steps", "rollout.prompts_per_step=128"),
    sampled("lr3e-3_cosine", "lr 3e-3, warm-up 10, cosine to 3e-4", *SCHEDULE),
    Arm("v_topk", "topk (top-20 + tail bucket), the card's schedule", "opd", ("loss.mode=topk",)),
    Arm("v_topk_sampled", "topk_sampled, the card's schedule", "opd", ("loss.mode=topk_sampled",)),
    Arm("v_topk_sampled_lr3e-3", "topk_sampled, lr 3e-3", "opd", ("loss.mode=topk_sampled", "optim.lr=3e-3")),
    Arm("v_topk_lr3e-3", "topk, lr 3e-3", "opd", ("loss.mode=topk", "optim.lr=3e-3")),
    Arm("v_full_lr3e-3", "the teacher's full distribution (k = vocabulary), lr 3e-3", "opd",
        ("loss.mode=topk", "loss.topk=4096", "optim.lr=3e-3")),
    Arm("v_topk_lr3e-3_cosine", "topk, lr 3e-3, warm-up 10, cosine to 3e-4", "opd", ("loss.mode=topk", *SCHEDULE)),
    # GKD's generalized JSD (TRL): the forward KL's pull does not vanish where the student misses the teacher's token.
    Arm("v_jsd0.5_cosine", "topk_jsd, beta 0.5 (the JSD), lr 3e-3, warm-up 10, cosine to 3e-4", "opd",
        ("loss.mode=topk_jsd", "loss.beta=0.5", *SCHEDULE)),
    forward(16, "(twice the steps)"),
    forward(32, "(the rollouts' sampling seed: run-to-run noise)", seed=1),
    forward(16, seed=1),
    Arm("v_topk_sampled_cosine_seed1", "topk_sampled, lr 3e-3, warm-up 10, cosine to 3e-4, seed 1", "opd",
        ("loss.mode=topk_sampled", *SCHEDULE, "trainer.seed=1")),
    forward(8, "(four times the steps)"),
    forward(8, seed=1),
    forward(4, "(eight times the steps)"),
    forward(4, seed=1),
    Arm("v_forward_lr1e-2_cosine", "topk_jsd, beta 0, lr 1e-2, warm-up 10, cosine to 1e-3", "opd",
        (*FORWARD, "optim.lr=1e-2", "optim.warmup_steps=10", "optim.schedule=cosine", "optim.min_lr=1e-3")),
]


# --------------------------------------------------------------------------------------------------
# The card's regime (`--regime after-sft`): from a student SFT'd on the teacher's answers to its plateau.
# The benchmark's base OPD schedule there is the card's lr ratio: a constant lr equal to the plateau SFT's final
# lr, no warm-up (the card: SFT 1e-5 → 1e-6, then OPD at 1e-6); continued seqKD trains at that same constant lr.
# Every arm runs with two rollout / data-order seeds.
# --------------------------------------------------------------------------------------------------

SEEDS = (0, 1)


def seeded(key: str, label: str, kind: str, overrides: tuple[str, ...]) -> list[Arm]:
    return [Arm(f"{key}_seed{s}", f"{label}, seed {s}", kind, (*overrides, f"trainer.seed={s}")) for s in SEEDS]


AFTER_SFT_CONFIGS = [  # (key, label, kind, overrides): each run once per seed in SEEDS
    ("seqkd", "continued sequence-level KD (SFT on the teacher's answers, constant lr = the SFT's final lr)", "seqkd", ()),
    ("opd_sampled_card", "OPD sampled (the card's mode) at the card's lr ratio (constant lr = the SFT's final lr)", "opd",
     CARD),
    ("opd_sampled_tiny", ("OPD sampled (the card's mode) at the tiny config's schedule (lr 3e-3, warm-up 10, cosine "
                          "to 3e-4)"), "opd", (*CARD, *SCHEDULE)),
    ("opd_forward_card", "OPD recommended (topk_jsd, beta 0) at the card's lr ratio", "opd", FORWARD),
    ("opd_forward_tiny", "OPD recommended (topk_jsd, beta 0) at the tiny config's schedule", "opd", (*FORWARD, *SCHEDULE)),
]
AFTER_SFT_ARMS = [arm for key, label, kind, overrides in AFTER_SFT_CONFIGS for arm in seeded(key, label, kind, overrides)]
