"""The metadata of one cell of a run (``cells/<cell>.json``): what ran, how it ended, what it cost.

The runner fills it in, the store writes and reads it, the report and ``bench compare`` read it. Cell
files written by earlier versions load: fields added since then are None there.
"""
from __future__ import annotations

import dataclasses
import enum
from typing import Any


class CellStatus(str, enum.Enum):
    """How a cell ended; the value is what its file holds."""

    OK = "ok"
    """Meta-trained and evaluated; its records are beside it."""
    FAILED = "failed"
    """Raised, reported a non-finite training loss or ran past the cell timeout; it runs again on resume."""
    NOT_APPLICABLE = "n/a"
    """The learner declined the suite (the reason is in ``error``)."""

    def __str__(self) -> str:
        return self.value


@dataclasses.dataclass(frozen=True)
class CellMetadata:
    """One cell's metadata. The fields up to ``status`` are written for every cell; the others where they apply
    (``error`` for a failed or n/a cell, the measurements for a finished one)."""

    cell_id: str
    suite: str
    setting: str
    setting_index: int
    """The setting's position in its suite (the report's order)."""
    shots: int
    ways: int | None
    learner: str
    seed: int
    hyperparameters: dict[str, Any]
    device: str
    learner_plugin: dict[str, Any]
    """The plugin source (entry point, distribution and version) that registered the learner."""
    suite_plugin: dict[str, Any]
    task_budget: int
    test_episodes: int
    test_steps: int
    status: CellStatus
    test_suite: str | None = None
    """Cross-domain: the suite whose test episodes the cell scored with a model meta-trained on another (``suite``
    then reads ``<meta-training suite>→<test suite>``); None: the meta-training suite's own."""
    backbone: str | None = None
    """The network the suite built (``bench run --backbone``; its default where it offers a choice); None: the suite
    offers no choice (or the file predates the field)."""
    cell_fingerprint: str | None = None
    """A hash of everything that determines the cell's numbers (None in files written before it was recorded)."""
    error: str | None = None
    traceback: str | None = None
    tasks_seen: int | None = None
    resumed_from_tasks: int | None = None
    """Tasks already seen at the mid-cell checkpoint the cell resumed from (0 when it started afresh)."""
    meta_train_seconds: float | None = None
    adapt_ms_per_episode: float | None = None
    adapted_parameters: int | None = None
    """How many numbers adapt to each test task (``Learner.adapted_parameter_count``); None: not stated."""
    metric_name: str | None = None
    lower_is_better: bool | None = None
    peak_rss_mib: float | None = None
    peak_cuda_mib: float | None = None
    machine_load: float | None = None
    """Threads ready to run on the machine, on average while the cell (or its seed group) ran, its own included
    (``bench.machine_load``); above ``cpu_cores`` the cell waited for a core and its seconds mean less."""
    cpu_cores: int | None = None
    torch_threads: int | None = None
    """The torch intra-op threads the cell ran with (``bench.threads``)."""
    val_episodes: int | None = None
    """Meta-validation episodes scored at each validation point (0: no meta-validation)."""
    val_every: int | None = None
    """Tasks seen between validation points."""
    val_seconds: float | None = None
    """Wall-clock seconds spent scoring meta-validation (not counted in ``meta_train_seconds``)."""
    selection: str | None = None
    """Which meta-trained state the test scored: ``best-val`` (the best validation point) or ``last``."""
    selection_note: str | None = None
    """Why the selection is not what ``--select`` asked for, or how it was made (e.g. the learner cannot hand over
    its state; no meta-validation)."""
    selected_tasks: int | None = None
    """Tasks seen at the state the test scored."""
    selected_step: int | None = None
    """The adaptation step the cell's result is read at: the best on meta-validation for the selected state (the
    protocol's last step without meta-validation)."""
    selected_val_metric: float | None = None
    """The mean meta-validation metric at the selected state and step."""
    test_episodes_sha256: str | None = None
    """The fingerprint of the test episodes scored: runs that share it can be compared episode by episode."""
    notes: list[str] | None = None
    """What the learner said about how it ran (e.g. ``compile=auto`` compiled or eager, and why)."""
    seed_group: list[int] | None = None
    """The seeds meta-trained together with this one as one vectorised model (``bench run --seeds-together``),
    this one included; None or ``[seed]``: alone. Their meta-training seconds are the group's shared equally, their peak
    memory the group's."""
    seed_group_note: str | None = None
    """Why a seed that was to meta-train in a group meta-trained alone (the group's error)."""
    record_rows: int | None = None
    """Rows of the cell's records file (set by the store; a shorter file is truncated)."""

    def to_json(self) -> dict[str, Any]:
        """The JSON object of the cell file."""
        return {**dataclasses.asdict(self), "status": self.status.value}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CellMetadata:
        """Read a cell file's object; ``ValueError`` names what is missing, unknown or not a status."""
        if not isinstance(data, dict):
            raise ValueError(f"a cell's metadata is a JSON object, not {type(data).__name__}")
        fields = {field.name: field for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        missing = [name for name, field in fields.items() if field.default is dataclasses.MISSING and name not in data]
        if unknown or missing:
            raise ValueError("; ".join(([f"unknown fields: {', '.join(unknown)}"] if unknown else [])
                                       + ([f"missing fields: {', '.join(missing)}"] if missing else [])))
        return cls(**{**data, "status": CellStatus(data["status"])})
