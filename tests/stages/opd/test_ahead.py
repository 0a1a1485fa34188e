"""One step off-policy OPD (`rollout.async_steps: 1`): the order of the pipeline, and exact resume."""

import threading
import time

import pytest

from posttrain.config import OPDConfig, load_config
from posttrain.stages.opd.ahead import Ahead, oversubscription
from posttrain.stages.opd.loop import run_opd
from tests.helpers import FAULT_RUN, TINY_OPD as TINY, opd_config as config, prompt_ids, records, same_weights


class RecordingRollout:
    """Stands in for a RolloutGroup: remembers the weights it holds and the order of its calls."""

    def __init__(self):
        self.weights, self.calls, self.thread = 0, [], None

    def update_weights(self, version):
        time.sleep(0.01)
        self.weights = version
        self.calls.append(("sync", version))
        self.thread = threading.current_thread()


def generate_and_score(step, prompts, rollout, teacher, cfg):
    time.sleep(0.02)
    rollout.calls.append(("generate", step, rollout.weights))
    return step, rollout.weights


def test_each_step_samples_from_the_weights_one_step_older_and_syncs_never_overtake():
    rollout = RecordingRollout()
    ahead = Ahead(rollout, generate_and_score)
    try:
        used = {}
        for step in range(1, 6):
            ahead.prepare(step, None, None, None)
            if step < 5:
                ahead.prepare(step + 1, None, None, None)  # while this step trains
            taken_step, used[step] = ahead.take(step)
            assert taken_step == step
            ahead.sync(lambda version=step: rollout.update_weights(version))  # "weights after step"
        ahead.drain()
    finally:
        ahead.close()
    # Step 1 and 2 from the initial weights, then always the weights of two steps before.
    assert used == {1: 0, 2: 0, 3: 1, 4: 2, 5: 3}
    assert rollout.weights == 5 and rollout.thread is not threading.current_thread()
    assert [c for c in rollout.calls if c[0] == "sync"] == [("sync", v) for v in range(1, 6)]


@pytest.fixture(scope="module")
def async_run(tiny_models, ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("opd-async") / "run"
    run_opd(config(tiny_models, out, (2, 3), *FAULT_RUN, "rollout.async_steps=1"))
    return out


def test_async_run_consumes_the_on_policy_runs_prompts_and_really_works_ahead(async_run, undisturbed):
    rows = records(async_run)
    assert prompt_ids(async_run) == prompt_ids(undisturbed)
    assert rows[0]["reverse_kl"] == records(undisturbed)[0]["reverse_kl"]  # step 1: same weights, same seed
    assert not same_weights(async_run, undisturbed)  # steps 2 and 5 sampled from one step older weights
    assert all(r["wait_s"] <= r["step_s"] for r in rows)


@pytest.mark.slow  # ~2 min; the default suite keeps the async run and the on-policy resume tests
def test_async_run_stopped_at_a_checkpoint_resumes_exactly(tiny_models, async_run, tmp_path):
    out = tmp_path / "stopped"
    run_opd(config(tiny_models, out, (2, 3), *FAULT_RUN, "rollout.async_steps=1", "trainer.stop_after_step=3"))
    run_opd(config(tiny_models, out, (2, 3), *FAULT_RUN, "rollout.async_steps=1"), resume=True)
    assert same_weights(async_run, out)
    assert [r["reverse_kl"] for r in records(async_run)] == [r["reverse_kl"] for r in records(out)]
    assert prompt_ids(out) == prompt_ids(async_run)


def test_working_ahead_with_more_threads_than_cores_is_warned_about():
    on_two_cores = lambda *overrides: oversubscription(load_config(OPDConfig, TINY, list(overrides)), cores=2)  # noqa: E731
    assert on_two_cores() is None  # on-policy: the groups take turns, 2 threads each is right
    warning = on_two_cores("rollout.async_steps=1")  # the tiny config's 2 threads each, side by side
    assert "2 + 2 torch threads on 2 cores" in warning and "threads_per_worker" in warning
    assert on_two_cores("rollout.async_steps=1", "rollout.threads_per_worker=1", "trainer.threads_per_worker=1",
                        "teacher.threads_per_worker=1") is None
