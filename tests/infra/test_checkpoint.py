"""Checkpoint directories: the manifest check on resume (a damaged checkpoint is passed over, with a
warning naming it, for the one before) and a full disk while writing (the previous one survives)."""

from __future__ import annotations

import errno

import pytest

from posttrain.infra import checkpoint, faults


def write(root, step, payload=b"weights" * 100):
    def files(tag):
        (root / tag).mkdir(parents=True, exist_ok=True)
        (root / tag / "model.pt").write_bytes(payload + bytes([step]))
        (root / tag / "sub").mkdir(exist_ok=True)
        (root / tag / "sub" / "optim.pt").write_bytes(b"adam" * 50)

    return checkpoint.save(files, root, step, {"step": step}, keep=5)


@pytest.mark.parametrize("damage, reason", [
    (lambda p: p.joinpath("model.pt").write_bytes(b"X" + p.joinpath("model.pt").read_bytes()[1:]),
     r"model\.pt does not match its sha256 in manifest\.json"),
    (lambda p: p.joinpath("sub", "optim.pt").unlink(), r"sub/optim\.pt is missing"),
    (lambda p: p.joinpath("model.pt").write_bytes(b"short"), r"model\.pt has 5 bytes, the manifest says 701"),
    (lambda p: p.joinpath("manifest.json").unlink(), r"manifest\.json is missing"),
])
def test_a_damaged_checkpoint_is_skipped_for_the_previous_one(tmp_path, capsys, damage, reason):
    root = tmp_path / "checkpoints"
    write(root, 1)
    newest = write(root, 2)
    assert checkpoint.latest_checkpoint(root)[0].name == "step_00000002"
    damage(newest)
    path, state = checkpoint.latest_checkpoint(root)
    assert path.name == "step_00000001" and state == {"step": 1}
    assert capsys.readouterr().out.startswith(f"[checkpoint] WARNING: {newest} is corrupt or partial (")
    assert checkpoint.verify(newest) is not None
    import re

    assert re.search(reason, checkpoint.verify(newest))


def test_sizes_only_when_checksums_are_off(tmp_path):
    root = tmp_path / "checkpoints"
    newest = write(root, 1)
    newest.joinpath("model.pt").write_bytes(b"X" + newest.joinpath("model.pt").read_bytes()[1:])
    assert checkpoint.verify(newest, checksums=False) is None
    assert checkpoint.latest_checkpoint(root, checksums=False)[0] == newest


def test_no_space_left_while_writing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    previous = write(root, 1)
    monkeypatch.setenv(faults.ENV, "enospc_during_checkpoint_write:2")
    faults.reset()
    with pytest.raises(checkpoint.CheckpointWriteError) as caught:
        write(root, 2)
    message = str(caught.value)
    assert caught.value.errno == errno.ENOSPC
    assert f"writing checkpoint step_00000002 under {root} failed: no space left on device" in message
    assert f"the previous checkpoint {previous} is intact" in message and "--resume" in message
    assert not (root / ".incomplete-step_00000002").exists()  # the partial write is removed, freeing its space
    assert checkpoint.verify(previous) is None and checkpoint.latest_checkpoint(root)[0] == previous
    assert (root / "latest").read_text() == "step_00000001"


def test_an_oserror_from_a_worker_write_is_reported_the_same_way(tmp_path):
    root = tmp_path / "checkpoints"

    def full_disk(tag):
        (root / tag).mkdir(parents=True)
        (root / tag / "half.pt").write_bytes(b"x")
        raise OSError(errno.ENOSPC, "No space left on device", str(root / tag / "model.pt"))

    with pytest.raises(checkpoint.CheckpointWriteError, match="no space left on device; the partial checkpoint was "
                                                             "removed and there is no earlier checkpoint"):
        checkpoint.save(full_disk, root, 1, {"step": 1}, keep=2)
    assert not any(root.iterdir())
