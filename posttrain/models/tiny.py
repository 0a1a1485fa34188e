"""The offline tiny suite: a byte-level BPE tokenizer with Qwen3's special tokens and a chat template
that marks assistant tokens, a tiny `qwen3_moe` student, a larger `qwen3_moe` teacher and a tiny
`qwen3_next` teacher — all built by this code, deterministic from a seed, saved with
`save_pretrained`, and loadable by plain `AutoModelForCausalLM` / `AutoTokenizer`.

No hub is reachable on CI or a laptop, so nothing here downloads anything: the tokenizer is
trained on the data this repository ships. The teachers are then warmed up on the shipped SFT data
(a short plain-torch loop, see `warm_up`): a random-init teacher's distribution is nearly uniform
and gives distillation nothing to move towards; a warmed-up one knows the data, and the stronger
`qwen3_next` teacher is trained longer than the `qwen3_moe` one, as in the card's weaker-then-stronger
cascade. The student stays a random-init base model; the SFT stage is what teaches it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from posttrain.data.chat import tokenize_conversation
from posttrain.data.mixture import load_mixture_spec, read_source_rows
from posttrain.data.packing import IGNORE
from posttrain.infra.paths import resolve_path

# Qwen3's added tokens, in their original order (ids 151643.. in the real vocabulary).
QWEN3_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>",
]

# Qwen3's ChatML layout, with `{% generation %}` around what the assistant writes (its content and
# `<|im_end|>`), so `apply_chat_template(..., return_assistant_tokens_mask=True)` yields the loss mask.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

TOKENIZER_CORPUS = ["data_mixtures/sft_tiny.yaml", "data_mixtures/opd_tiny_card.yaml"]
VOCAB_SIZE = 4096
MODEL_NAMES = ("student", "teacher-moe", "teacher-next")
WARM_UP_STEPS = {"student": 0, "teacher-moe": 250, "teacher-next": 400}
WARM_UP_BATCH = 32
WARM_UP_LR = 3e-3
# Of each warm-up batch, this share is drawn from the verifiable tasks' train split (the SFT mixture's `tasks`
# source), the rest from the whole SFT mixture: the teachers are then clearly better than the SFT'd student on
# the held-out addition the demo measures (teacher-moe 0.61, teacher-next 0.87, the student 0.14 after SFT;
# 2026-12-05), as the card's teachers are where its student is weak. Drawn uniformly, 80/200 steps left the
# first teacher no better than the student (0.09 both).
WARM_UP_TASK_SHARE = 0.75


def _sft_conversations(source_name: str | None = None) -> list[list[dict]]:
    spec = load_mixture_spec(resolve_path(TOKENIZER_CORPUS[0]))
    return [row["messages"] for source in spec.sources if source_name in (None, source.name)
            for row in read_source_rows(source)]


def warm_up(model, tokenizer, steps: int, seed: int) -> float:
    """Train `model` for `steps` AdamW steps on the shipped SFT conversations (assistant tokens only),
    `WARM_UP_TASK_SHARE` of each batch from the tasks' train split.

    Written by hand rather than through the SFT stage so that `posttrain tiny` needs neither Ray nor
    DeepSpeed and takes about a minute. Right-padded batches with an attention mask, not packing:
    the reference (non-CUDA) kernels of `qwen3_next`'s linear attention ignore packed position ids.
    Returns the last step's loss.
    """
    examples = [tokenize_conversation(tokenizer, m) for m in _sft_conversations()]
    tasks = [tokenize_conversation(tokenizer, m) for m in _sft_conversations("tasks")]
    # CPU kernels reduce in a thread-count-dependent order, and with two threads not even the same order twice
    # (measured: two builds, two sets of weights); one thread makes the build bit-exact from the seed. It is most
    # of a fresh demo's time (~2.5 of its ~4 minutes); two threads would save a quarter of that.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _warm_up_loop(model, tokenizer, examples, tasks, steps, seed)
    finally:
        torch.set_num_threads(threads)
        model.eval()


def _warm_up_loop(model, tokenizer, examples, tasks, steps: int, seed: int) -> float:
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=WARM_UP_LR, weight_decay=0.0)
    model.train()
    loss = torch.tensor(float("nan"))
    from_tasks = round(WARM_UP_BATCH * WARM_UP_TASK_SHARE)
    for step in range(steps):
        batch = ([tasks[i] for i in torch.randint(len(tasks), (from_tasks,), generator=generator).tolist()] +
                 [examples[i] for i in torch.randint(len(examples), (WARM_UP_BATCH - from_tasks,), generator=generator).tolist()])
        width = max(len(e.input_ids) for e in batch)
        input_ids_BT = torch.full((len(batch), width), tokenizer.pad_token_id)
        attention_mask_BT = torch.zeros((len(batch), width), dtype=torch.long)
        labels_BT = torch.full((len(batch), width), IGNORE)
        for row, e in enumerate(batch):
            n = len(e.input_ids)
            input_ids_BT[row, :n] = torch.tensor(e.input_ids)
            attention_mask_BT[row, :n] = 1
            labels_BT[row, :n] = torch.where(torch.tensor(e.loss_mask, dtype=torch.bool), torch.tensor(e.input_ids), IGNORE)
        for group in optimizer.param_groups:  # linear decay to 10%
            group["lr"] = WARM_UP_LR * (1 - 0.9 * step / max(1, steps - 1))
        loss = model(input_ids=input_ids_BT, attention_mask=attention_mask_BT, labels=labels_BT, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return loss.item()


def _corpus_texts() -> list[str]:
    """Every string of the shipped tiny mixtures, in a fixed order."""
    texts = []
    for mixture in TOKENIZER_CORPUS:
        for source in load_mixture_spec(resolve_path(mixture)).sources:
            for row in read_source_rows(source):
                for message in row["messages"]:
                    texts.append(message["content"])
    return texts


def build_tokenizer(vocab_size: int = VOCAB_SIZE):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=QWEN3_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus_texts(), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.padding_side = "left"  # generation pads on the left
    return tokenizer


def _padded_vocab(tokenizer) -> int:
    return ((len(tokenizer) + 63) // 64) * 64


def student_config(vocab_size: int, tokenizer):
    from transformers import Qwen3MoeConfig

    return Qwen3MoeConfig(
        # head_dim 32, not hidden / heads = 24: vLLM's CPU attention takes head sizes 32, 64, 80, ... only, and
        # the tests and the demo run the vLLM backends on these same models.
        vocab_size=vocab_size, hidden_size=96, intermediate_size=192, moe_intermediate_size=96,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
        num_experts=8, num_experts_per_tok=2, norm_topk_prob=True, decoder_sparse_step=1,
        tie_word_embeddings=True, max_position_embeddings=4096, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        router_aux_loss_coef=0.001, **_special_ids(tokenizer),
    )


def teacher_moe_config(vocab_size: int, tokenizer):
    from transformers import Qwen3MoeConfig

    return Qwen3MoeConfig(
        vocab_size=vocab_size, hidden_size=128, intermediate_size=256, moe_intermediate_size=128,
        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
        num_experts=16, num_experts_per_tok=4, norm_topk_prob=True, decoder_sparse_step=1,
        tie_word_embeddings=False, max_position_embeddings=4096, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        **_special_ids(tokenizer),
    )


def teacher_next_config(vocab_size: int, tokenizer):
    from transformers import Qwen3NextConfig

    return Qwen3NextConfig(
        vocab_size=vocab_size, hidden_size=128, intermediate_size=256, moe_intermediate_size=64,
        shared_expert_intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, linear_num_key_heads=2, linear_num_value_heads=4,
        linear_key_head_dim=32, linear_value_head_dim=32, linear_conv_kernel_dim=4,
        layer_types=["linear_attention", "linear_attention", "linear_attention", "full_attention"],
        num_experts=16, num_experts_per_tok=4, norm_topk_prob=True, decoder_sparse_step=1,
        tie_word_embeddings=False, max_position_embeddings=4096, **_special_ids(tokenizer),
    )


def _special_ids(tokenizer) -> dict:
    return {
        "bos_token_id": None,
        "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
        "pad_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    }


def generation_config(tokenizer):
    """What the built models ship: sampling at temperature 1, stopping at <|im_end|> or <|endoftext|>."""
    from transformers import GenerationConfig

    im_end, endoftext = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    return GenerationConfig(eos_token_id=[im_end, endoftext], pad_token_id=endoftext, do_sample=True,
                            temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=64)


def build_tiny_suite(output_dir: str | Path, seed: int = 0, force: bool = False) -> dict[str, Path]:
    """Build tokenizer + three models into `output_dir`; returns name -> directory."""
    from transformers import AutoModelForCausalLM

    output_dir = Path(output_dir)
    paths = {name: output_dir / name for name in MODEL_NAMES}
    if not force and all((p / "config.json").exists() for p in paths.values()):
        return paths
    # Build into a temporary sibling and rename: a half-built suite is never mistaken for a whole one.
    tmp = output_dir.with_name(output_dir.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    tokenizer = build_tokenizer()
    vocab_size = _padded_vocab(tokenizer)
    tokenizer.save_pretrained(tmp / "tokenizer")
    builders = {"student": student_config, "teacher-moe": teacher_moe_config, "teacher-next": teacher_next_config}
    for offset, (name, make_config) in enumerate(builders.items()):
        torch.manual_seed(seed * 1000 + offset)
        config = make_config(vocab_size, tokenizer)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        if WARM_UP_STEPS[name]:
            loss = warm_up(model, tokenizer, WARM_UP_STEPS[name], seed=seed * 1000 + offset)
            print(f"[posttrain] warmed up {name}: {WARM_UP_STEPS[name]} steps on the SFT data, loss {loss:.3f}", flush=True)
        model.generation_config = generation_config(tokenizer)
        model.save_pretrained(tmp / name)
        tokenizer.save_pretrained(tmp / name)
    (tmp / "tiny_suite.json").write_text(json.dumps(
        {"seed": seed, "vocab_size": vocab_size, "models": list(builders), "warm_up_steps": WARM_UP_STEPS,
         "warm_up_task_share": WARM_UP_TASK_SHARE}, indent=2))

    if output_dir.exists():
        shutil.rmtree(output_dir)
    os.replace(tmp, output_dir)
    return paths


def ensure_model(model_path: str, build_if_missing: bool, seed: int = 0) -> None:
    """Build the tiny suite where a config points into it and it is not there yet."""
    path = Path(model_path)
    if path.exists() or not build_if_missing:
        return
    if path.name not in MODEL_NAMES:
        raise FileNotFoundError(
            f"model path {model_path} does not exist and is not one of the tiny suite's models {MODEL_NAMES}"
        )
    print(f"[posttrain] building the tiny offline models into {path.parent} (seed {seed})", flush=True)
    build_tiny_suite(path.parent, seed=seed)
