"""Weight-sync buckets: a flat byte buffer per bucket round-trips every tensor exactly, filled from a
stream one bucket at a time, shared through /dev/shm by name."""

import os
import pickle
import weakref

import pytest
import torch

from posttrain.infra.weight_buckets import SHM_DIR, SharedBucket, buckets, fill_buckets, load_bucket, received, update_info


def test_flat_buckets_round_trip_mixed_dtypes_and_shapes_exactly():
    torch.manual_seed(0)
    state = {"a": torch.randn(3, 5), "b": torch.randn(7).to(torch.bfloat16), "c": torch.arange(11),
             "d": torch.randn(2, 3, 4, dtype=torch.float16), "e": torch.randn(600, 300), "f": torch.randn(600, 300)}
    parts = buckets(state, bucket_mb=1)  # "e" and "f" are 0.69 MB each: several tensors per bucket, and 2 buckets
    assert 1 < len(parts) < len(state)
    # Through pickle, as the object store moves them (numpy's buffer out of band).
    received_parts = [pickle.loads(pickle.dumps(p, protocol=5)) for p in parts]
    got = {name: t for p in received_parts for name, t in p.tensors()}
    assert list(got) == list(state)
    for name, tensor in state.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor)


def test_a_stream_is_copied_as_it_arrives_into_one_bucket_at_a_time():
    """The source hands out one scratch tensor overwritten for every item (as a ZeRO-3 module is released
    after its turn): each bucket holds the values as they were yielded, and only one bucket is alive."""
    scratch = torch.empty(64, 1024)  # 256 KiB
    expected = {}

    def source():
        for i in range(10):
            scratch.fill_(float(i))
            expected[f"t{i}"] = scratch.clone()
            yield f"t{i}", scratch

    alive, most, seen = weakref.WeakSet(), 0, {}
    for bucket in fill_buckets(source(), bucket_mb=0.6):  # two tensors per bucket
        alive.add(bucket)
        most = max(most, len(alive))
        seen.update({name: t.clone() for name, t in bucket.tensors()})
        assert bucket.buffer.size <= int(0.6 * 2**20) and len(bucket) == 2
        del bucket
    assert most == 1 and all(torch.equal(seen[k], v) for k, v in expected.items()) and len(seen) == 10
    big = list(fill_buckets([("big", torch.ones(1024, 1024))], bucket_mb=1 / 4))  # 4 MiB > the bucket: its own size
    assert len(big) == 1 and big[0].buffer.size == 4 * 2**20


def test_shared_buckets_travel_by_name_and_are_removed():
    state = {"w": torch.randn(30, 7), "b": torch.arange(5, dtype=torch.int32)}
    bucket = next(fill_buckets(state.items(), 1, SharedBucket.create))
    info = update_info(bucket)
    assert set(info) == {"shm_name", "entries"} and os.path.exists(os.path.join(SHM_DIR, info["shm_name"]))
    assert pickle.loads(pickle.dumps(info)) == info  # names and msgpack-native lists, no tensors
    with received(info) as named:
        assert all(torch.equal(dict(named)[k], v) for k, v in state.items())
    SharedBucket.remove(bucket.shm_name)
    assert not os.path.exists(os.path.join(SHM_DIR, info["shm_name"]))


def test_load_bucket_sets_a_live_model_in_place_and_names_unknown_tensors():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    target = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    weight_before = model[0].weight
    assert sum(load_bucket(model, b) for b in buckets(target, 1)) == len(target)
    assert model[0].weight is weight_before  # in place: the engine's tensors stay the same objects
    assert all(torch.equal(model.state_dict()[k], v) for k, v in target.items())
    with pytest.raises(KeyError, match="nope.weight"):
        load_bucket(model, buckets({"nope.weight": torch.zeros(1)}, 1)[0])
