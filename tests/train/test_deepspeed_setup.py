"""The DeepSpeed side of a trainer worker."""

import os
import subprocess
import sys
import textwrap

from posttrain.train.worker import free_port


def test_a_stale_op_build_lock_does_not_hang_the_trainer_start(tmp_path):
    """A process killed while DeepSpeed JIT-built its CPU shared-memory op leaves the build's lock
    file behind; DeepSpeed's own init then waits for it forever. The trainer's init does not build it."""
    stale = tmp_path / "extensions" / "deepspeed_shm_comm"
    stale.mkdir(parents=True)
    (stale / "lock").touch()
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path / "extensions"), "RANK": "0", "WORLD_SIZE": "1",
           "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    script = textwrap.dedent("""
        import torch.distributed as dist
        from posttrain.train.deepspeed_setup import init_distributed
        init_distributed("cpu")
        print("world", dist.get_world_size(), dist.get_backend())
    """)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "world 1 gloo" in done.stdout
    assert (stale / "lock").exists()  # not built, not waited for


def test_a_collective_tensor_lives_where_the_process_group_reduces():
    """Issue 24 row 2: ZeRO stage 0's non-finite flag was a CPU tensor all-reduced over NCCL ("No backend type
    associated with device type cpu" at step 1 on any GPU). Its device now follows the group's backend."""
    import pytest
    import torch

    from posttrain.train.deepspeed_setup import collective_device

    assert collective_device("nccl", torch.device("cuda", 3)) == torch.device("cuda", 3)
    assert collective_device("gloo", torch.device("cpu")) == torch.device("cpu")
    assert collective_device("gloo", torch.device("cuda", 0)) == torch.device("cpu")  # gloo reduces host tensors
    with pytest.raises(ValueError, match="NCCL needs CUDA tensors"):
        collective_device("nccl", torch.device("cpu"))
