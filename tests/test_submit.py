"""`posttrain submit` against a real two-node Ray cluster on loopback, and its argument checks."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from posttrain.config import ConfigError, SFTConfig, load_config
from posttrain.submit import check_stage_args, entrypoint, runtime_env

REPO = Path(__file__).resolve().parent.parent


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class LoopbackCluster:
    """A head and a second node, each `ray start --block` with 1 CPU: terminating a Popen stops
    exactly that node (and its processes), never another Ray on the machine. Every port is chosen
    free and the temp dir is private, so the test session's own local Ray and any other cluster on
    the machine are untouched (`ray.init()` elsewhere never discovers this one)."""

    def __init__(self):
        self.temp = tempfile.mkdtemp(prefix="ptray-")  # short: Ray's socket paths must stay < 108 chars
        ray = str(Path(sys.executable).with_name("ray"))
        # Token authentication on, with a token of the test's own (independent of ~/.ray/auth_token).
        self.env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token",
                        RAY_AUTH_TOKEN=secrets.token_hex(16),
                        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        gcs, self.dashboard_port, client, *node_ports = _free_ports(13)
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        common = ["--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--num-gpus", "0",
                  "--temp-dir", self.temp, "--disable-usage-stats"]

        def node_flags(ports):
            names = ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--metrics-export-port",
                     "--node-manager-port", "--object-manager-port")
            return [x for name, port in zip(names, ports) for x in (name, str(port))]

        self.procs = []
        self.procs.append(self._start([ray, "start", "--head", "--port", str(gcs), "--dashboard-host", "127.0.0.1",
                                       "--dashboard-port", str(self.dashboard_port), "--include-dashboard", "true",
                                       "--ray-client-server-port", str(client), *common, *node_flags(node_ports[:5])],
                                      "head"))
        self.procs.append(self._start([ray, "start", "--address", f"127.0.0.1:{gcs}", *common,
                                       *node_flags(node_ports[5:])], "node2"))

    def _start(self, cmd: list[str], name: str) -> subprocess.Popen:
        log = open(Path(self.temp) / f"{name}.log", "w")
        return subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def wait_for_nodes(self, count: int, timeout_s: float = 60) -> None:
        code = ("import sys, ray.util.state as s; from posttrain.submit import _client; _client(sys.argv[1]); "
                "print(sum(n.state == 'ALIVE' for n in s.list_nodes(address=sys.argv[1])))")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for p in self.procs:
                assert p.poll() is None, f"a ray start exited early: {self.log_tail()}"
            out = subprocess.run([sys.executable, "-c", code, self.address], env=self.env, capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip() and int(out.stdout.split()[-1]) >= count:
                return
            time.sleep(1)
        raise TimeoutError(f"the cluster did not reach {count} nodes in {timeout_s} s: {self.log_tail()}")

    def processes(self) -> list:
        """Every process this cluster started: the two `ray start`s and all their descendants, plus
        anything whose command line names the private temp dir (in case one was re-parented)."""
        import psutil

        found = {}
        for p in self.procs:
            try:
                root = psutil.Process(p.pid)
                for q in [root, *root.children(recursive=True)]:
                    found[q.pid] = q
            except psutil.NoSuchProcess:
                pass
        for q in psutil.process_iter(["cmdline"]):
            if any(self.temp in part for part in (q.info["cmdline"] or [])):
                found[q.pid] = q
        return list(found.values())

    def stop(self) -> list:
        """Stop both nodes; return the processes still alive afterwards (should be none)."""
        import psutil

        started = self.processes()
        for p in reversed(self.procs):  # the second node first, then the head
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        _, alive = psutil.wait_procs(started, timeout=15)
        for q in alive:  # ours, by pid: never leave them behind, but report them
            q.kill()
        return alive

    def log_tail(self) -> str:
        return "\n".join(f"--- {f.name}\n" + f.read_text()[-2000:] for f in sorted(Path(self.temp).glob("*.log")))


@pytest.fixture
def two_nodes():
    cluster = LoopbackCluster()
    try:
        cluster.wait_for_nodes(2)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.temp, ignore_errors=True)  # the nodes' logs and sockets


@pytest.mark.slow  # long: CI's slow step (pytest -m slow); see README, Tests and CI
def test_sft_job_on_two_nodes(two_nodes, tiny_models, tmp_path):
    """Must-show 1: a tiny SFT through `posttrain submit`, two trainer workers on different nodes."""
    out = tmp_path / "sft"
    # A 64-conversation slice of the shipped data: the job tokenises its whole mixture, and 2 steps need 16.
    rows = (REPO / "data_mixtures/data/sft/general.jsonl").read_text().splitlines()[:64]
    (tmp_path / "small.jsonl").write_text("\n".join(rows) + "\n")
    (tmp_path / "mixture.yaml").write_text(
        f"name: small\nsources:\n  - {{name: general, path: {tmp_path / 'small.jsonl'}, format: messages, weight: 1}}\n")
    # Meanwhile, a job that fails on the cluster (its model is missing there) must make the command fail.
    failing = subprocess.Popen(
        [sys.executable, "-m", "posttrain.cli", "submit", "--address", two_nodes.address, "--", "sft",
         "--config", "configs/tiny/sft.yaml", "--output-dir", str(tmp_path / "failed"), "model.path=/nonexistent/model"],
        cwd=REPO, env=two_nodes.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "posttrain.cli", "submit", "--address", two_nodes.address, "--env", "POSTTRAIN_TEST=1",
             "--", "sft", "--config", "configs/tiny/sft.yaml", "--output-dir", str(out),
             f"model.path={tiny_models['student']}", "trainer.num_workers=2", "trainer.placement=SPREAD",
             "trainer.max_steps=2", "trainer.global_batch_size=8", "data.max_seq_len=128",
             f"data.mixture={tmp_path / 'mixture.yaml'}", "cluster.nodes=2",
             "logging.progress_bar=false", "logging.tensorboard=false"],
            cwd=REPO, env=two_nodes.env, capture_output=True, text=True, timeout=240,
        )
        elapsed = time.monotonic() - started
        assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-3000:]}\n{two_nodes.log_tail()}"
        assert "[submit] job raysubmit_" in result.stdout and "SUCCEEDED" in result.stdout
        assert "[sft] done" in result.stdout  # the job's own log, followed to its end

        placement = json.loads((out / "placement.json").read_text())["trainer"]
        assert placement["strategy"] == "SPREAD"
        nodes = [w["node_id"] for w in placement["workers"]]
        assert len(nodes) == 2 and len(set(nodes)) == 2 and all(nodes), nodes  # one rank per node
        assert len((out / "metrics.jsonl").read_text().splitlines()) == 2

        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(out / "final")
        assert model.config.model_type == "qwen3_moe"

        failed_out, failed_err = failing.communicate(timeout=120)
        assert failing.returncode == 1, failed_out[-3000:] + failed_err[-2000:]
        assert "model path /nonexistent/model does not exist" in failed_out
        assert ": FAILED (Job entrypoint command failed with exit code 2" in failed_out
    finally:
        if failing.poll() is None:  # only when an assertion above failed
            failing.kill()

    left = two_nodes.stop()
    assert left == [], f"Ray processes left after stopping both nodes: {left}"
    print(f"two-node submit: {elapsed:.1f} s")


def test_submit_refuses_a_relative_or_unsupported_output_dir():
    args = ["--config", "configs/tiny/sft.yaml"]
    with pytest.raises(ConfigError, match=r"output_dir 'runs/sft' is relative.*every node sees"):
        check_stage_args("sft", args)
    with pytest.raises(ConfigError, match=r"s3:// URIs are not supported"):
        check_stage_args("sft", args + ["--output-dir", "s3://bucket/runs/sft"])
    with pytest.raises(ConfigError, match=r"unknown key 'trainer\.num_worker'"):
        check_stage_args("sft", args + ["--output-dir", "/shared/x", "trainer.num_worker=2"])
    assert check_stage_args("sft", args + ["--output-dir", "/shared/x"]) == "/shared/x"
    cfg = load_config(SFTConfig, "configs/tiny/sft.yaml", ["output_dir=file:///shared/y"])
    assert cfg.output_dir == "/shared/y"


def test_entrypoint_and_runtime_env(tmp_path):
    assert entrypoint("sft", ["--config", "a b.yaml", "optim.lr=$X"]) == "posttrain sft --config 'a b.yaml' 'optim.lr=$X'"
    env = runtime_env(str(tmp_path), {"A": "1"}, ["rich"])
    assert env["working_dir"] == str(tmp_path.resolve()) and env["env_vars"] == {"A": "1"} and env["pip"] == ["rich"]
    assert "/models/" in env["excludes"] and "models/" not in env["excludes"]  # posttrain/models ships
    with pytest.raises(ConfigError, match="not a directory"):
        runtime_env(str(tmp_path / "nope"), {}, [])
