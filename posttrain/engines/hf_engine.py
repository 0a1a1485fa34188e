"""What the hf rollout and teacher workers share: their device and torch threads, and sleeping."""

from __future__ import annotations

import torch

from posttrain.infra.runlog import quiet_library_progress
from posttrain.models.params import add_relative_noise_


class HFEngine:
    """An hf worker's `sleep`/`wake_up` (the vLLM workers' are vLLM's sleep mode): asleep, the weights
    wait in host memory and the device's cached blocks are returned, so a colocated trainer can use them.
    On a CPU the host is the device: nothing moves, but the protocol is the same and is checked."""

    asleep = False

    def __init__(self, num_threads: int):
        quiet_library_progress()
        torch.set_num_threads(num_threads)
        self.device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
        self.model: torch.nn.Module | None = None

    def sleep(self) -> None:
        if self.device.type == "cuda":
            self.model.to("cpu")
            torch.cuda.empty_cache()
        self.asleep = True

    def wake_up(self) -> None:
        self.model.to(self.device)
        self.asleep = False

    def perturb(self, scale: float, seed: int = 0) -> None:
        """Noise of `scale` x each tensor's standard deviation on every weight (the `posttrain check` test of
        teacher replicas, which must then disagree)."""
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for param in self.model.parameters():
                add_relative_noise_(param, scale, generator)

    @staticmethod
    def node_id() -> str:
        """The Ray node this worker runs on (a weight sync reaches workers on the sender's node through /dev/shm)."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def _check_awake(self) -> None:
        if self.asleep:
            raise RuntimeError(f"{type(self).__name__} was called while asleep; wake_up() first")
