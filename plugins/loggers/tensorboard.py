"""TensorBoard event files of each cell's meta-training (``torch.utils.tensorboard``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.loggers import Logger


class TensorBoardLogger(Logger):
    """TensorBoard: each cell's training loss and meta-val metric per step against tasks seen (RUN/tensorboard)."""

    requires = ("tensorboard",)
    install_hint = "pip install 'metabench[tensorboard]'"
    options = {"log_dir": "the folder of the event files, one subfolder per cell (default: RUN/tensorboard)"}

    def start(self, cell: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        folder = Path(self.options.get("log_dir") or self.run_dir / "tensorboard") / cell["cell_id"]
        # purge_step=0: TensorBoard hides what an earlier attempt at this cell wrote (a resumed cell replays its curve)
        self.writer = SummaryWriter(str(folder), purge_step=0)
        self.metric = cell["metric_name"]

    def train(self, tasks_seen: int, loss: float) -> None:
        self.writer.add_scalar("train_loss", loss, tasks_seen)

    def validation(self, tasks_seen: int, means: dict[int, float]) -> None:
        for step, mean in means.items():
            self.writer.add_scalar(f"val_{self.metric}/step_{step}", mean, tasks_seen)

    def finish(self, status: str) -> None:
        self.writer.close()
