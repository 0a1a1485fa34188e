"""Peak memory of one trainer worker with and without each memory lever.

A bigger tiny `qwen3_moe` than the test student (hidden 256, 8 layers, 32 experts, top-4, the tiny
tokenizer's vocabulary) so the levers' differences show. Each lever gets a fresh TrainerGroup (one
Ray actor, a real DeepSpeed engine) that runs a few SFT steps on the same packed batches; the
worker reports its process's peak resident set (`getrusage(RUSAGE_SELF).ru_maxrss`) and, on a GPU,
`torch.cuda.max_memory_allocated`. A row "worker floor" is an actor that imported torch,
transformers and DeepSpeed and did nothing else. Next to each measurement: the planning formula's
device-memory estimate (`posttrain.planning.levers.training_memory`, fp32, this batch).

    python benchmarks/memory_levers.py            # ~3 min on 2 CPU cores
    python benchmarks/memory_levers.py --no-docs  # print only

Writes its table into `docs/performance.md` (between the memory-levers markers) unless --no-docs.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

LEVERS = [  # (row name, trainer options, deepspeed options, lora options)
    ("baseline (ZeRO-2)", {}, {}, {}),
    ("LoRA r=8, attention", {}, {}, {"enabled": True}),
    ("LoRA r=8, attention + experts", {}, {}, {"enabled": True, "target_parameters": ["mlp.experts.gate_up_proj",
                                                                                       "mlp.experts.down_proj"]}),
    ("activation checkpointing", {"activation_checkpointing": True}, {}, {}),
    ("ZeRO-Offload optimizer (ZeRO-2)", {}, {"offload_optimizer": "cpu"}, {}),
    ("ZeRO-3", {}, {"zero_stage": 3}, {}),
    ("ZeRO-3 + offload params + optimizer", {}, {"zero_stage": 3, "offload_params": "cpu", "offload_optimizer": "cpu"}, {}),
]


def build_model(out: Path) -> Path:
    """The tiny student's tokenizer with a larger qwen3_moe body."""
    import torch
    from transformers import AutoModelForCausalLM

    from posttrain.models.tiny import _padded_vocab, _special_ids, build_tokenizer, student_config

    path = out / "moe-256x8x32"
    if (path / "config.json").exists():
        return path
    tokenizer = build_tokenizer()
    config = student_config(_padded_vocab(tokenizer), tokenizer)
    config.update(dict(hidden_size=256, intermediate_size=512, moe_intermediate_size=256, num_hidden_layers=8,
                       num_attention_heads=8, num_key_value_heads=4, head_dim=32, num_experts=32,
                       num_experts_per_tok=4, **_special_ids(tokenizer)))
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def batches(tokens: int, micro_batches: int, vocab: int):
    import torch

    from posttrain.data.packing import pack

    g = torch.Generator().manual_seed(0)
    length = 256
    examples = [(torch.randint(10, vocab, (length,), generator=g).tolist(), [0] * 32 + [1] * (length - 32))
                for _ in range(tokens * micro_batches // length)]
    return pack(examples, tokens)


def floor() -> dict:
    """An idle trainer actor's peak RSS: the interpreter, torch, transformers, DeepSpeed, Ray."""
    import ray

    from posttrain.train.worker import TrainerWorker

    class Idle(TrainerWorker):
        def imports(self) -> None:
            import deepspeed  # noqa: F401
            import transformers  # noqa: F401

    actor = ray.remote(Idle).options(num_cpus=1).remote(0, 1, 1)
    try:
        ray.get(actor.imports.remote())
        return ray.get(actor.memory.remote())
    finally:
        ray.kill(actor)


def measure(path: Path, trainer_opts: dict, ds_opts: dict, lora_opts: dict, data, steps: int) -> dict:
    from posttrain.config import DeepSpeedConfig, LoRAConfig, ModelConfig, OptimConfig, TrainerConfig
    from posttrain.losses import LOSSES
    from posttrain.train.group import TrainerGroup

    trainer = TrainerConfig(cpus_per_worker=1, router_aux_loss_coef=0.001, **trainer_opts)
    group = TrainerGroup(ModelConfig(path=str(path)), trainer, OptimConfig(lr=1e-4, schedule="constant"),
                         DeepSpeedConfig(**ds_opts), steps, pad_id=0, lora=LoRAConfig(**lora_opts))
    try:
        started = time.perf_counter()
        losses = [group.train_step(data, LOSSES["nll"]) for _ in range(steps)]
        step_s = (time.perf_counter() - started) / steps
        peak = group.memory()[0]
        first = losses[0].loss
        return {**peak, "step_s": step_s, "first_loss": first, "trainable": group.trainable_params,
                "params": group.num_params}
    finally:
        group.close()


def estimate(path: Path, trainer_opts: dict, ds_opts: dict, lora_opts: dict, tokens: int) -> float:
    from transformers import AutoConfig

    from posttrain.config import LoRAConfig
    from posttrain.planning.levers import training_memory

    return training_memory(AutoConfig.from_pretrained(path), num_devices=1, zero_stage=ds_opts.get("zero_stage", 2),
                           bf16=False, tokens_per_micro_batch=tokens, lora=LoRAConfig(**lora_opts),
                           activation_checkpointing=trainer_opts.get("activation_checkpointing", False),
                           offload_optimizer=ds_opts.get("offload_optimizer", "none") != "none",
                           offload_params=ds_opts.get("offload_params", "none") != "none")["total"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/posttrain-memory-levers", help="where the model is built")
    parser.add_argument("--tokens", type=int, default=2048, help="tokens per packed micro-batch")
    parser.add_argument("--micro-batches", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args(argv)

    import ray
    import torch
    from transformers import AutoConfig

    from posttrain.infra.cluster import init_ray
    from posttrain.config import RayConfig

    path = build_model(Path(args.work))
    config = AutoConfig.from_pretrained(path)
    data = batches(args.tokens, args.micro_batches, config.vocab_size)
    init_ray(RayConfig())
    rows = []
    try:
        base = floor()
        print(f"worker floor: {base['peak_rss_bytes'] / 2**20:.0f} MiB", flush=True)
        for name, trainer_opts, ds_opts, lora_opts in LEVERS:
            result = measure(path, trainer_opts, ds_opts, lora_opts, data, args.steps)
            result["estimate"] = estimate(path, trainer_opts, ds_opts, lora_opts, args.tokens)
            rows.append((name, result))
            print(f"{name:40s} peak RSS {result['peak_rss_bytes'] / 2**20:7.0f} MiB  "
                  f"(+{(result['peak_rss_bytes'] - base['peak_rss_bytes']) / 2**20:.0f} over the floor)  "
                  f"first loss {result['first_loss']:.6f}  {result['step_s']:.1f} s/step", flush=True)
    finally:
        ray.shutdown()

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    table = render(rows, base, config, args, gpu)
    print(table)
    if not args.no_docs:
        write_section(ROOT / "docs" / "performance.md", table)
        print(f"wrote the memory-lever section of {ROOT / 'docs' / 'performance.md'}")
    return 0


START, END = "<!-- memory-levers:start -->", "<!-- memory-levers:end -->"


def write_section(doc: Path, table: str) -> None:
    """Replace the text between the markers of `doc` (the rest of the page is hand-written)."""
    text = doc.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{doc}: no {START} ... {END} markers to write the table between")
    head, rest = text.split(START, 1)
    doc.write_text(f"{head}{START}\n{table.rstrip()}\n{END}{rest.split(END, 1)[1]}")


def render(rows, base, config, args, gpu) -> str:
    mib = 2**20
    params = rows[0][1]["params"]
    lines = [
        "## Memory levers (measured)",
        "",
        f"One trainer worker (a Ray actor with a DeepSpeed engine, fp32, {platform.machine()} "
        f"{'GPU ' + gpu if gpu else 'CPU only, ' + str(os.cpu_count()) + ' cores'}), training a tiny `qwen3_moe` "
        f"(hidden {config.hidden_size}, {config.num_hidden_layers} layers, {config.num_experts} experts, "
        f"top-{config.num_experts_per_tok}; {params / 1e6:.1f} M parameters) for {args.steps} SFT steps of "
        f"{args.micro_batches} packed micro-batches x {args.tokens} tokens. Peak RSS is the worker process's "
        f"`ru_maxrss`; the floor is an idle worker that only imported torch, transformers and DeepSpeed "
        f"({base['peak_rss_bytes'] / mib:.0f} MiB). \"Formula\" is `posttrain.planning.levers.training_memory` for this "
        "model and batch (device bytes: weights, gradients, optimizer state, activations, the chunked loss).",
        "",
        "| lever | trainable params | peak RSS (MiB) | over the floor (MiB) | vs baseline | "
        + ("peak GPU (MiB) | " if gpu else "") + "formula (MiB) | first-step loss | s/step |",
        "|---|---:|---:|---:|---:|" + ("---:|" if gpu else "") + "---:|---:|---:|",
    ]
    baseline = rows[0][1]["peak_rss_bytes"] - base["peak_rss_bytes"]
    for name, r in rows:
        over = r["peak_rss_bytes"] - base["peak_rss_bytes"]
        gpu_cell = f"{r['peak_gpu_bytes'] / mib:.0f} | " if gpu else ""
        lines.append(f"| {name} | {r['trainable'] / 1e6:.2f} M | {r['peak_rss_bytes'] / mib:.0f} | {over / mib:.0f} | "
                     f"{over / baseline:.2f}x | {gpu_cell}{r['estimate'] / mib:.0f} | {r['first_loss']:.6f} | "
                     f"{r['step_s']:.1f} |")
    lines += [
        "",
        f"Reproduce: `python benchmarks/memory_levers.py --tokens {args.tokens} --micro-batches {args.micro_batches} "
        f"--steps {args.steps}`. s/step is indicative only (a small machine shared with other jobs); "
        "activation checkpointing's recompute includes the eager per-expert loop of transformers' MoE block.",
        "",
    ]
    if not gpu:
        lines += [
            "No GPU was available for this measurement, so there is no GPU column. On a CPU the host *is* the "
            "device: ZeRO-Offload and parameter offload move state from \"device\" memory to host memory in "
            "the same process, so they cannot lower the resident set here (they add pinned/staging buffers); "
            "on a GPU they move the optimizer state (12 bytes per trainable parameter in bf16 training) and, "
            "with ZeRO-3, the parameters off the device. LoRA and activation checkpointing save memory on "
            "either.",
            "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
