"""TrainerGroup: N trainer actors (one per device) forming one torch.distributed / DeepSpeed world."""

from __future__ import annotations

import torch

from posttrain.cluster import default_cpus_per_worker, release, reserve, spawn
from posttrain.config import DeepSpeedConfig, LoRAConfig, ModelConfig, OptimConfig, TrainerConfig
from posttrain.data.packing import PackedBatch, distribute
from posttrain.train.worker import TrainerWorker


class TrainerGroup:
    def __init__(self, model: ModelConfig, trainer: TrainerConfig, optim: OptimConfig, ds: DeepSpeedConfig,
                 total_steps: int, pad_id: int, lora: LoRAConfig | None = None, share=None):
        """`share`: a `posttrain.opd.colocate.Share` — the actors go into bundles reserved for several
        groups (colocated OPD) instead of a placement group of their own."""
        import ray

        self.num_workers = trainer.num_workers
        self.pad_id = pad_id
        if share is None:
            cpus, gpus = trainer.cpus_per_worker or default_cpus_per_worker(self.num_workers), trainer.gpus_per_worker
            self.placement = reserve("trainer", self.num_workers, cpus, gpus, trainer.placement)
        else:
            cpus, gpus, self.placement = share.cpus, share.gpus, None
        self.workers = spawn(TrainerWorker, share.placement if share else self.placement, cpus, gpus,
                             lambda rank: (rank, self.num_workers, max(1, int(cpus))), count=self.num_workers)
        master = ray.get(self.workers[0].address.remote())
        info = ray.get([w.setup.remote(master, model, trainer, optim, ds, total_steps, lora) for w in self.workers])
        self.num_params, self.trainable_params = info[0]["num_params"], info[0]["trainable_params"]
        self.strategy = "colocated" if share is not None else trainer.placement
        self.node_ids = [i["node_id"] for i in info]  # where each rank runs, as the worker itself reports

    def placement_record(self) -> dict:
        return {"strategy": self.strategy, "workers": [{"rank": r, "node_id": n} for r, n in enumerate(self.node_ids)]}

    def _all(self, method: str, *args, **kwargs) -> list:
        import ray

        return ray.get([getattr(w, method).remote(*args, **kwargs) for w in self.workers])

    def train_step(self, batches: list[PackedBatch], objective: str, **kwargs) -> dict:
        """One optimizer step over a global batch; returns the summed statistics of all ranks."""
        import ray

        global_targets = sum(b.num_loss_tokens for b in batches)
        shards = distribute(batches, self.num_workers, self.pad_id)
        results = ray.get([w.train_step.remote(shard, objective, global_targets, **kwargs)
                           for w, shard in zip(self.workers, shards)])
        totals: dict[str, float] = {}
        for r in results:
            for key, value in r["totals"].items():
                totals[key] = totals.get(key, 0.0) + value
        counts = [r["expert_counts"] for r in results if r["expert_counts"] is not None]
        return {
            "totals": totals,
            "global_targets": global_targets,
            "micro_batches": len(shards[0]),
            "expert_counts": torch.stack(counts).sum(0) if counts else None,
            "grad_norm": results[0]["grad_norm"],
            "lr": results[0]["lr"],
            "compute_s": max(r["compute_s"] for r in results),
        }

    def save_checkpoint(self, root: str, tag: str) -> None:
        self._all("save_checkpoint", root, tag)

    def load_checkpoint(self, root: str, tag: str) -> None:
        self._all("load_checkpoint", root, tag)

    def export_hf(self, output_dir: str) -> None:
        self._all("export_hf", output_dir)

    def memory(self) -> list[dict]:
        """Each worker's peak memory (`TrainerWorker.memory`)."""
        return self._all("memory")

    def weight_buckets(self, bucket_mb: int) -> list:
        return self._all("weight_buckets", bucket_mb)[0]

    def shutdown(self) -> None:
        try:
            self._all("shutdown")
        finally:
            release(self.workers, self.placement)
