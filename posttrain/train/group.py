"""TrainerGroup: N trainer actors (one per device) forming one torch.distributed / DeepSpeed world."""

from __future__ import annotations

import threading

from posttrain.config import DeepSpeedConfig, LoRAConfig, LossConfig, ModelConfig, OptimConfig, TrainerConfig
from posttrain.data.packing import PackedBatch, distribute
from posttrain.infra import faults
from posttrain.infra.closing import Closing
from posttrain.infra.cluster import (Share, WorkerFailure, default_cpus_per_worker, get_all, release, reserve, spawn,
                                     torch_threads)
from posttrain.losses import Loss
from posttrain.train.results import TrainStep
from posttrain.train.weight_stream import SyncStats
from posttrain.train.worker import TrainerWorker


class TrainerGroup(Closing):
    def __init__(self, model: ModelConfig, trainer: TrainerConfig, optim: OptimConfig, ds: DeepSpeedConfig,
                 total_steps: int, pad_id: int, lora: LoRAConfig | None = None, share: Share | None = None):
        """`share`: the actors go into bundles reserved for several groups (colocated OPD) instead of a
        placement group of their own."""
        import ray

        self.num_workers = trainer.num_workers
        self.pad_id = pad_id
        self.broken = False  # a worker died: the ranks left are stuck in a collective, only kill them
        # Calls reach the ranks from the driver and from the OPD pipeline's thread (a weight sync): each
        # call is submitted to every rank at once, so all ranks run their collectives in one order.
        self.submitting = threading.Lock()
        if share is None:
            cpus, gpus = trainer.cpus_per_worker or default_cpus_per_worker(self.num_workers), trainer.gpus_per_worker
            self.placement = reserve("trainer", self.num_workers, cpus, gpus, trainer.placement)
        else:
            cpus, gpus, self.placement = share.cpus, share.gpus, None
        self.workers = spawn(TrainerWorker, share.placement if share else self.placement, cpus, gpus,
                             lambda rank: (rank, self.num_workers, torch_threads(trainer.threads_per_worker, cpus)),
                             count=self.num_workers)
        try:
            master = ray.get(self.workers[0].address.remote())
            info = get_all([w.setup.remote(master, model, trainer, optim, ds, total_steps, lora) for w in self.workers])
        except BaseException:
            release(self.workers, self.placement)  # a failed start must not keep its devices reserved
            raise
        self.num_params, self.trainable_params = info[0]["num_params"], info[0]["trainable_params"]
        self.strategy = "colocated" if share is not None else trainer.placement
        self.node_ids = [i["node_id"] for i in info]  # where each rank runs, as the worker itself reports

    def placement_record(self) -> dict:
        return {"strategy": self.strategy, "workers": [{"rank": r, "node_id": n} for r, n in enumerate(self.node_ids)]}

    def _all(self, method: str, *args, **kwargs) -> list:
        with self.submitting:
            refs = [getattr(w, method).remote(*args, **kwargs) for w in self.workers]
        return self._get(refs, method)

    def _get(self, refs: list, method: str) -> list:
        """The ranks' results; a dead rank stops the run (one DeepSpeed world cannot lose a member
        and go on: the run resumes from its last complete checkpoint instead)."""
        import ray

        try:
            return get_all(refs)
        except ray.exceptions.RayActorError as e:
            self.broken = True
            raise WorkerFailure(f"a trainer worker died during {method} ({type(e).__name__}: {str(e).splitlines()[0]}); "
                                "the trainer ranks cannot go on without it") from None

    def train_step(self, batches: list[PackedBatch], loss: Loss, loss_cfg: LossConfig | None = None) -> TrainStep:
        """One optimizer step over a global batch, with the per-token `loss` (a `posttrain.losses.Loss`)."""
        import ray

        global_targets = sum(b.num_loss_tokens for b in batches)
        shards = distribute(batches, self.num_workers, self.pad_id)
        with self.submitting:
            refs = [w.train_step.remote(shard, loss, global_targets, loss_cfg) for w, shard in zip(self.workers, shards)]
        if faults.fires_on_call("kill_trainer_worker"):
            ray.kill(self.workers[0])
        return TrainStep.of(self._get(refs, "train_step"), global_targets, micro_batches=len(shards[0]))

    def save_checkpoint(self, root: str, tag: str) -> None:
        self._all("save_checkpoint", root, tag)

    def load_checkpoint(self, root: str, tag: str) -> None:
        self._all("load_checkpoint", root, tag)

    def export_hf(self, output_dir: str) -> None:
        self._all("export_hf", output_dir)

    def target_logprobs(self, batches: list[PackedBatch], names: tuple[str, ...]) -> list[dict]:
        """The trainer's log-probs of the batches' targets with their `names` values (`TrainerWorker.target_logprobs`),
        every rank's micro-batches, in one list."""
        shards = distribute(batches, self.num_workers, self.pad_id)
        with self.submitting:
            refs = [w.target_logprobs.remote(shard, names) for w, shard in zip(self.workers, shards)]
        return [part for rank in self._get(refs, "target_logprobs") for part in rank]

    def perturb(self, scale: float, seed: int) -> None:
        """Noise on every weight, alike on every rank (`TrainerWorker.perturb`)."""
        self._all("perturb", scale, seed)

    def free_device_cache(self) -> None:
        """Every rank empties its CUDA cache (`TrainerWorker.free_device_cache`)."""
        self._all("free_device_cache")

    def memory(self) -> list[dict]:
        """Each worker's peak memory (`TrainerWorker.memory`)."""
        return self._all("memory")

    def send_weights(self, receivers: list, nodes: list[str], bucket_mb: float, transfer: str = "shm",
                     engine_tp: int = 1) -> SyncStats:
        """Stream the current weights into the engine actors `receivers` (`TrainerWorker.send_weights`)."""
        return self._all("send_weights", receivers, nodes, bucket_mb, transfer, engine_tp)[0]

    def close(self) -> None:
        """Leave the process group on every rank, then free the actors and their reservation."""
        try:
            if not self.broken:
                self._all("shutdown")
        finally:
            release(self.workers, self.placement)
