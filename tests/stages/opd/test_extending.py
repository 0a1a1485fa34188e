"""Extension points: a new loss is one function and one table entry, a new backend one class and one
entry — and a run picks them up by name, through the real Ray workers."""

import pytest

from posttrain.config import ConfigError
from posttrain.engines.backends import BACKENDS, Backend, register_backend
from posttrain.engines.hf_rollout import HFRolloutWorker
from posttrain.engines.hf_teacher import HFTeacherWorker
from posttrain.engines.types import Scores
from posttrain.losses import LOSSES, Loss, register_loss
from posttrain.losses.reverse_kl import sampled_reverse_kl
from posttrain.stages.opd.loop import run_opd
from tests.helpers import FAULT_RUN, opd_config, records


def half_reverse_kl(logits_NV, targets_N, cfg, *, sampler_logprobs, teacher_logprobs):
    """A throw-away loss: the sampled-token reverse KL at half strength, and a metric of its own (the
    share of tokens whose sampler log-prob is above the teacher's)."""
    loss_N, _ = sampled_reverse_kl(logits_NV, targets_N, cfg, sampler_logprobs=sampler_logprobs,
                                   advantages=-(sampler_logprobs - teacher_logprobs))
    return 0.5 * loss_N, {"above_teacher_frac": (sampler_logprobs > teacher_logprobs).float()}


class HumbleTeacher(HFTeacherWorker):
    """A throw-away teacher backend: the hf teacher, one nat less sure of every token."""

    def score(self, sequences, topk=0):
        return [Scores(s.logprobs - 1.0) for s in super().score(sequences, topk)]


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(LOSSES, "half", LOSSES["sampled"])  # restored after the test, whatever register does
    monkeypatch.setitem(BACKENDS, "humble", BACKENDS["hf"])
    register_loss("half", Loss(half_reverse_kl, inputs=("sampler_logprobs", "teacher_logprobs")))
    register_backend("humble", Backend(rollout=HFRolloutWorker, teacher=HumbleTeacher))


def test_a_registered_loss_and_backend_are_used_by_name(tiny_models, undisturbed, registered, tmp_path):
    """Step 1 of the undisturbed run again, with the new teacher backend and the new loss: the same samples
    (same student, same seed), so the reverse KL is one nat higher and the loss half of (reverse KL + 1)."""
    out = tmp_path / "extended"
    run_opd(opd_config(tiny_models, out, (1,), *FAULT_RUN, "loss.mode=half", "teacher.backend=humble"))
    plain, extended = records(undisturbed)[0], records(out)[0]
    assert extended["reverse_kl"] == pytest.approx(plain["reverse_kl"] + 1.0, abs=1e-5)
    # On-policy at step 1 the importance ratio is 1 (to ~1e-6): the new loss per token is half the sampled
    # reverse KL (the undisturbed run trains with the default loss; its `reverse_kl` is the sampled one).
    assert extended["loss"] == pytest.approx(0.5 * (plain["reverse_kl"] + 1.0), abs=1e-4)
    assert 0 < extended["above_teacher_frac"] <= 1  # the loss's own metric, per response token


def test_names_outside_the_tables_are_refused_before_any_work(tiny_models, tmp_path):
    with pytest.raises(ConfigError, match=r"'loss.mode' must be one of \['nll', 'sampled', 'topk'.*\], got 'fancy'"):
        run_opd(opd_config(tiny_models, tmp_path / "a", (1,), "loss.mode=fancy"))
    with pytest.raises(ConfigError, match=r"'teacher.backend' must be one of \['hf', 'vllm'.*\], got 'sglang'"):
        run_opd(opd_config(tiny_models, tmp_path / "b", (1,), "teacher.backend=sglang"))
    with pytest.raises(ValueError, match=r"loss 'x': unknown input\(s\) \['teacher_hidden'\]"):
        register_loss("x", Loss(half_reverse_kl, inputs=("teacher_hidden",)))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
