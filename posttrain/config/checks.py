"""The value checks over a built config: the declared ones (`one_of`, `positive`, ...), the memory levers' impossible
combinations, OPD's sampler, the output directory."""

from __future__ import annotations

import dataclasses
import math

from posttrain.config.fields import ConfigError


def check_values(cfg, where: str) -> None:
    """The checks declared with the fields (`one_of`, `positive`, `non_negative`), over the whole tree."""
    for key, value, meta in _walk(cfg, ""):
        if "choices" in meta and value not in meta["choices"]:
            raise ConfigError(f"{where}: '{key}' must be one of {list(meta['choices'])}, got {value!r}")
        if meta.get("positive") and not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"{where}: {key} must be > 0, got {value!r}".replace(key, _quoted(key), 1))
        if meta.get("non_negative") and value < 0:
            raise ConfigError(f"{where}: '{key}' must be >= 0, got {value!r}")
        if meta.get("unit_interval") and not 0 <= value <= 1:
            raise ConfigError(f"{where}: '{key}' must be in [0, 1], got {value!r}")
    if hasattr(cfg, "output_dir"):
        cfg.output_dir = check_output_dir(cfg.output_dir, where)
    _check_levers(cfg, where)
    _check_sampling(cfg, where)


def _walk(node, prefix: str, label: str = ""):
    """(dotted key, value, field metadata) of every field under `node`, lists of sections included;
    a list item with a `path` (a cascade stage) carries it in its key's label: `'teachers[1].steps' (u)`."""
    for f in dataclasses.fields(node):
        value, key = getattr(node, f.name), prefix + f.name
        if dataclasses.is_dataclass(value):
            yield from _walk(value, key + ".")
        elif isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            for i, item in enumerate(value):
                yield from _walk(item, f"{key}[{i}].", f" ({item.path})" if hasattr(item, "path") else "")
        else:
            yield key + label, value, f.metadata


def _quoted(key: str) -> str:
    """`'a.b'`, or `'teachers[1].steps' (u)` for a labelled key."""
    name, _, label = key.partition(" ")
    return f"'{name}'" + (f" {label}" if label else "")


def _check_levers(cfg, where: str) -> None:
    """The memory levers' combinations that cannot work, named before any worker starts."""
    ds, lora = getattr(cfg, "deepspeed", None), getattr(cfg, "lora", None)
    if ds is not None and ds.offload_params != "none" and ds.zero_stage != 3:
        raise ConfigError(f"{where}: 'deepspeed.offload_params: {ds.offload_params}' needs 'deepspeed.zero_stage: 3' "
                          f"(ZeRO-2 keeps whole parameters on every device), got zero_stage {ds.zero_stage}")
    if ds is not None and ds.offload_optimizer != "none" and ds.zero_stage == 0:
        raise ConfigError(f"{where}: 'deepspeed.offload_optimizer: {ds.offload_optimizer}' needs ZeRO "
                          "('deepspeed.zero_stage: 2' or 3), got zero_stage 0")
    rollout = getattr(cfg, "rollout", None)
    if rollout is not None and rollout.colocate and rollout.async_steps:
        raise ConfigError(f"{where}: 'rollout.async_steps: {rollout.async_steps}' overlaps sampling with training, but "
                          "'rollout.colocate' makes them take turns on shared devices; drop one of them")
    if rollout is not None and rollout.colocate:
        for group in ("rollout", "teacher"):
            if getattr(cfg, group).gpus_per_worker > 1:  # each colocated actor has a third of its bundle's one GPU
                raise ConfigError(f"{where}: 'rollout.colocate' runs each {group} engine on its bundle's one device, but "
                                  f"'{group}.gpus_per_worker' is {getattr(cfg, group).gpus_per_worker} (tensor parallel): "
                                  "a colocated engine cannot span GPUs; set it to 1 or turn colocation off")
            count = getattr(cfg, group).num_workers
            if count > cfg.trainer.num_workers:
                raise ConfigError(f"{where}: 'rollout.colocate' puts the {group} workers in the trainer's bundles, one per "
                                  f"device: '{group}.num_workers' ({count}) must be <= 'trainer.num_workers' "
                                  f"({cfg.trainer.num_workers})")
    if lora is not None and lora.enabled:
        if not 0 <= lora.dropout < 1:
            raise ConfigError(f"{where}: 'lora.dropout' must be in [0, 1), got {lora.dropout!r}")
        if not lora.target_modules and not lora.target_parameters:
            raise ConfigError(f"{where}: 'lora.target_modules' and 'lora.target_parameters' are both empty: "
                              "nothing would train")
        router = [t for t in lora.target_parameters if t.endswith("gate.weight")]
        if router and getattr(cfg.trainer, "freeze_router", False):
            raise ConfigError(f"{where}: 'lora.target_parameters' adapts the router ({router[0]}) but "
                              "'trainer.freeze_router' is true; drop one of them")


def _check_sampling(cfg, where: str) -> None:
    """OPD's sampler must draw from the distribution the trainer scores: the student's plain softmax.

    The loss's importance ratio is exp(log π_train − log π_sampler) with log π_train from the trainer's
    temperature-1 softmax, and the advantage and the logged `reverse_kl` are log π_sampler − log π_teacher,
    the reverse KL of the student as it is exported. A tempered or truncated sampler breaks all three
    (measured, tiny suite: temperature 0.7 gave ratios 0.45–18.7 and clipped 25% of the tokens at step 1;
    top_p 0.9 a ratio of 0.90 on every token), so such a config is refused rather than silently wrong.
    """
    rollout = getattr(cfg, "rollout", None)
    if rollout is None:
        return
    why = ("OPD trains the student's own distribution: the loss's importance ratio compares the trainer's plain "
           "softmax with the sampler's log-probs, and the advantage and the logged reverse_kl are "
           "log π_sampler − log π_teacher, the reverse KL of the student as exported, only when the sampler draws "
           "from that same distribution")
    if rollout.temperature != 1.0:
        raise ConfigError(f"{where}: 'rollout.temperature' must be 1.0 for OPD, got {rollout.temperature!r}: {why}; "
                          f"at temperature {rollout.temperature} the sampler draws from another one (ratios off on "
                          "every token, the logged KL that of a tempered student). The card's recipe samples at 1.0")
    if rollout.top_p != 1.0:
        raise ConfigError(f"{where}: 'rollout.top_p' must be 1.0 for OPD, got {rollout.top_p!r}: {why}; top-p "
                          "truncates the sampler's distribution to a nucleus the trainer does not see (every ratio "
                          "off by the nucleus' mass). The card's recipe samples with top_p 1.0")


def check_output_dir(output_dir: str, where: str = "config") -> str:
    """`output_dir` must be a filesystem path (on a cluster: one every node sees, e.g. NFS or a
    FUSE-mounted bucket). A URI such as s3://... is refused here, before any work: checkpoints are
    written by DeepSpeed and renamed into place, which needs a POSIX filesystem, not an object store."""
    from urllib.parse import urlparse

    scheme = urlparse(str(output_dir)).scheme
    if scheme and scheme != "file" and len(scheme) > 1:  # len 1: a Windows drive letter
        raise ConfigError(
            f"{where}: 'output_dir' {output_dir!r}: {scheme}:// URIs are not supported; give a path on a filesystem "
            "that every node mounts (e.g. /mnt/shared/runs/x, or the bucket mounted with s3fs/gcsfuse)"
        )
    return urlparse(output_dir).path if scheme == "file" else output_dir
