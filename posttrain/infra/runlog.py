"""Per-step records: `metrics.jsonl` (one object per step), TensorBoard, and the console.

On a terminal the console shows a tqdm bar (step, loss, tokens/s, ETA); elsewhere (CI, Ray job
logs) one line per `every` steps, nanochat-style.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path

from posttrain.config import ConfigError, LoggingConfig
from posttrain.infra.closing import Closing


class RunLog(Closing):
    def __init__(self, output_dir: Path, logging: LoggingConfig, total_steps: int, start_step: int = 0,
                 desc: str = "train", run_config: dict | None = None):
        self.path = Path(output_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate_after(start_step)
        self.file = open(self.path, "a", encoding="utf-8")
        self.total, self.every, self.start_step = total_steps, logging.every, start_step
        self.started = time.perf_counter()
        self.tb = None
        if logging.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(Path(output_dir) / "tensorboard"), purge_step=start_step + 1)
        self.wandb = _wandb_run(Path(output_dir), logging, desc, run_config) if logging.wandb != "off" else None
        self.bar = None
        if logging.progress_bar and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc=desc, dynamic_ncols=True)

    def _truncate_after(self, step: int) -> None:
        truncate_after(self.path, step)

    def log(self, record: dict, step_line: bool = True) -> None:
        """Append `record`; `step_line=False`: a record beside the steps (the step-0 eval), which neither
        moves the bar nor prints a step line."""
        self.file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.file.flush()
        step = record["step"]
        if self.tb is not None:
            for key, value in scalars(record):
                self.tb.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(dict(scalars(record)), step=step)
        if not step_line:
            return
        headline = {k: record[k] for k in ("loss", "reverse_kl", "lr", "tokens_per_s") if isinstance(record.get(k), (int, float))}
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in headline.items()}, refresh=False)
            self.bar.update(1)
        elif step % self.every == 0 or step == self.total:
            done = step - self.start_step
            elapsed = time.perf_counter() - self.started
            eta = elapsed / max(1, done) * (self.total - step)
            parts = " | ".join(f"{k} {v:.4g}" for k, v in headline.items())
            mfu = f" | mfu {record['mfu']:.2%}" if record.get("mfu") else ""
            print(f"step {step:5d}/{self.total} | {parts}{mfu} | eta {eta:5.0f}s", flush=True)

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
        if self.bar is not None:
            self.bar.close()


def scalars(record: dict):
    """(name, number) pairs of a record, a per-layer list as name/0, name/1, ... (TensorBoard's and W&B's)."""
    for key, value in record.items():
        if isinstance(value, (int, float)) and key != "step":
            yield key, value
        elif isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
            for i, v in enumerate(value):
                yield f"{key}/{i}", v


def check_wandb(logging: LoggingConfig) -> None:
    """`logging.wandb` needs the optional package: say so before any work rather than at the first step."""
    if logging.wandb == "off":
        return
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise ConfigError(f"logging.wandb={logging.wandb} needs Weights & Biases: pip install 'posttrain[wandb]' "
                          "(or logging.wandb=off)") from None


def _wandb_run(output_dir: Path, logging: LoggingConfig, stage: str, run_config: dict | None):
    """A W&B run under <output_dir>/wandb; a resumed run continues the same W&B run (its id is kept there)."""
    import wandb

    (output_dir / "wandb").mkdir(exist_ok=True)
    id_file = output_dir / "wandb" / "run_id"
    if not id_file.exists():
        id_file.write_text(uuid.uuid4().hex[:12])
    # console="off": W&B leaves stdout alone (the step lines stay ours); silent: no banners.
    return wandb.init(project=logging.wandb_project, name=f"{output_dir.name} ({stage})", id=id_file.read_text().strip(),
                      resume="allow", dir=str(output_dir), mode=logging.wandb, config=run_config, job_type=stage,
                      settings=wandb.Settings(console="off", silent=True))


def truncate_after(path: Path, step: int) -> None:
    """A resumed run rewrites the steps after its checkpoint: keep only records up to `step`.

    A line cut short by a kill mid-write is dropped with the rest past the checkpoint.
    """
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if line.strip() and json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:
            pass
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


class JsonlLog(Closing):
    """One JSON object per step, appended and flushed; a resumed run first drops the steps past its checkpoint."""

    def __init__(self, path: Path, start_step: int = 0):
        self.path = Path(path)
        truncate_after(self.path, start_step)
        self.file = open(self.path, "a", encoding="utf-8")

    def log(self, record: dict, step_line: bool = True) -> None:
        """Append `record`; `step_line=False`: a record beside the steps (the step-0 eval), which neither
        moves the bar nor prints a step line."""
        self.file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def quiet_library_progress() -> None:
    """datasets' and transformers' own progress bars flood logs; ours is the one that matters."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
