"""Weight-sync buckets: a flat byte buffer per bucket round-trips every tensor exactly."""

import pickle

import torch

from posttrain.infra.weight_buckets import buckets, load_bucket


def test_flat_buckets_round_trip_mixed_dtypes_and_shapes_exactly():
    torch.manual_seed(0)
    state = {"a": torch.randn(3, 5), "b": torch.randn(7).to(torch.bfloat16), "c": torch.arange(11),
             "d": torch.randn(2, 3, 4, dtype=torch.float16), "e": torch.randn(600, 300), "f": torch.randn(600, 300)}
    parts = buckets(state, bucket_mb=1)  # "e" and "f" are 0.69 MB each: several tensors per bucket, and 2 buckets
    assert 1 < len(parts) < len(state)
    # Through pickle, as the object store moves them (numpy's buffer out of band).
    received = [pickle.loads(pickle.dumps(p, protocol=5)) for p in parts]
    got = {name: t for p in received for name, t in p.tensors()}
    assert list(got) == list(state)
    for name, tensor in state.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor)


def test_load_bucket_sets_a_live_model_in_place_and_names_unknown_tensors():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    target = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    weight_before = model[0].weight
    assert sum(load_bucket(model, b) for b in buckets(target, 1)) == len(target)
    assert model[0].weight is weight_before  # in place: the engine's tensors stay the same objects
    assert all(torch.equal(model.state_dict()[k], v) for k, v in target.items())
    try:
        load_bucket(model, buckets({"nope.weight": torch.zeros(1)}, 1)[0])
    except KeyError as e:
        assert "nope.weight" in str(e)
    else:
        raise AssertionError("an unknown tensor name must fail")
