"""Colocated engine groups take turns on the shared devices (issue 24 row 3)."""

from posttrain.engines.group import DeviceTurns


class Group:
    """An engine group as DeviceTurns sees it (`asleep`, `sleep()`; `wake_up` takes the turn first, as
    EngineGroup's does over its Ray actors in tests/stages/opd/test_colocate.py), each call logged."""

    def __init__(self, role, turns, log):
        self.role, self.turns, self.log, self.asleep = role, turns, log, False
        turns.take(self)
        log.append(f"{role} starts")

    def sleep(self):
        self.log.append(f"{self.role} sleeps")
        self.asleep = True

    def wake_up(self):
        self.turns.take(self)
        self.log.append(f"{self.role} wakes")
        self.asleep = False


def test_an_engine_never_starts_or_wakes_beside_another_awake_one_and_the_trainer_cache_goes_first():
    """The rollout stays awake after a weight sync (sampling comes next); at the first step and at each cascade
    switch a teacher starts before that sampling: the rollout was left awake beside it, and vLLM's start-up
    check failed on the device's free memory. The trainer never emptied its CUDA cache before an engine woke."""
    log = []
    turns = DeviceTurns()
    turns.free_trainer_cache = lambda: log.append("trainer frees its cache")
    rollout = Group("rollout", turns, log)
    rollout.wake_up()  # the weight sync before step 1: it stays awake for sampling
    teacher = Group("teacher", turns, log)  # step 1's teacher (or the cascade's next) loads now
    teacher.sleep()  # a colocated teacher sleeps once loaded
    rollout.wake_up()  # sampling
    teacher.wake_up()  # scoring
    assert log == ["trainer frees its cache", "rollout starts",
                   "trainer frees its cache", "rollout wakes",
                   "rollout sleeps", "trainer frees its cache", "teacher starts", "teacher sleeps",
                   "trainer frees its cache", "rollout wakes",
                   "rollout sleeps", "trainer frees its cache", "teacher wakes"]
    awake = set()
    for line in log:  # at no point are two engine groups awake
        role, verb = line.split(" ", 1)
        if verb in ("starts", "wakes"):
            awake.add(role)
        elif verb == "sleeps":
            awake.discard(role)
        assert len(awake - {"trainer"}) <= 1
