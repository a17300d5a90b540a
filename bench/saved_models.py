"""Saved models (``bench run --save-models``): the selected state of each finished cell, kept in its run folder as
``cells/<cell>.model.pt`` for ``bench eval`` to test again.

The file is ``torch.save`` of ``{"format", "info", "state"}``: ``state`` is the learner's ``state_dict()`` after
model selection (the state the test scored), ``info`` what the state belongs to (the cell, its fingerprint, the
learner and suite plugins and versions, hyper-parameters, setting and selection), JSON values only. Everything in it
loads with ``torch.load(weights_only=True)``: tensors and plain containers, nothing in a run folder is executed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import torch

from bench.api import Learner
from bench.errors import BenchError
from bench.grid import Cell, setting_fields
from bench.store import atomic_write_bytes
from bench.validation import Selection

MODEL_FORMAT = 1
MODEL_SUFFIX = ".model.pt"


class ModelFileError(BenchError):
    """A saved model cannot be used: the message names the file or cell and what is wrong."""


def model_file(cells_dir: Path, cell_id: str) -> Path:
    """Where a cell's saved model goes, beside its records."""
    return cells_dir / f"{cell_id}{MODEL_SUFFIX}"


def plain(value: Any) -> Any:
    """``value`` as JSON would give it back (tuples as lists, other objects as strings)."""
    return json.loads(json.dumps(value, default=str))


def model_info(cell: Cell, fingerprint: str, selection: Selection) -> dict[str, Any]:
    """What a saved state belongs to: the cell, its fingerprint, plugins, hyper-parameters, setting and selection."""
    return {
        "cell_id": cell.cell_id, "cell_fingerprint": fingerprint, "seed": cell.seed,
        "learner": {"name": cell.learner.name, "distribution": cell.learner.source.distribution,
                    "version": cell.learner.source.version},
        "suite": {"name": cell.suite.name, "distribution": cell.suite.source.distribution,
                  "version": cell.suite.source.version},
        "hyperparameters": plain(dataclasses.asdict(cell.hyperparameters)),
        "setting": plain(setting_fields(cell.setting)),
        "selection": {"mode": selection.mode, "tasks": selection.tasks, "step": selection.step,
                      "val_metric": selection.val_metric},
    }


def save_model(path: Path, learner: Learner, info: dict[str, Any]) -> str | None:
    """Write ``learner``'s state with ``info`` to ``path`` atomically; or, where it cannot be saved, leave no file and
    return why (a note for the cell's metadata)."""
    state = learner.state_dict()
    if state is None:
        return (f"model not saved (--save-models): {type(learner).__name__}.state_dict() is None, it cannot hand "
                "over its state")
    buffer = io.BytesIO()
    torch.save({"format": MODEL_FORMAT, "info": info, "state": state}, buffer)
    data = buffer.getvalue()
    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # what weights_only refuses differs between torch versions
        return (f"model not saved (--save-models): {type(learner).__name__}.state_dict() holds more than tensors and "
                f"plain containers ({_first_line(error)})")
    atomic_write_bytes(path, data)
    return None


@dataclasses.dataclass(frozen=True)
class SavedModel:
    """A model file read back: its path, the sha256 of its bytes, its ``info`` and its state."""

    path: Path
    sha256: str
    info: dict[str, Any]
    state: dict[str, Any]


def load_model(path: Path, device: torch.device) -> SavedModel:
    """Read a model file (tensors onto ``device``); a truncated or corrupt one is a ``ModelFileError`` naming it."""
    try:
        data = path.read_bytes()
        saved = torch.load(io.BytesIO(data), map_location=device, weights_only=True)
    except Exception as error:  # torch raises many kinds for a damaged file
        raise ModelFileError(f"{path} is truncated or corrupt ({type(error).__name__}: {_first_line(error)}); "
                             "run its cell again with bench run --save-models") from None
    if not (isinstance(saved, dict) and saved.get("format") == MODEL_FORMAT and isinstance(saved.get("info"), dict)
            and isinstance(saved.get("state"), dict)):
        raise ModelFileError(f"{path} is not a metabench model file of format {MODEL_FORMAT}")
    return SavedModel(path, hashlib.sha256(data).hexdigest(), saved["info"], saved["state"])


def mismatch(saved: dict[str, Any], cell: Cell, fingerprint: str) -> str | None:
    """What differs between a saved model's ``info`` and the installed plugins and configuration of its ``cell``
    (whose fingerprint is now ``fingerprint``), or None."""
    for kind, registration in (("learner", cell.learner), ("suite", cell.suite)):
        was, now = saved[kind], registration.source
        if (was.get("distribution"), was.get("version")) != (now.distribution, now.version):
            return (f"its {kind} plugin '{registration.name}' was {was.get('distribution')} {was.get('version')}, "
                    f"{now.distribution} {now.version} is installed")
    for what, key, now in (("hyper-parameters", "hyperparameters", plain(dataclasses.asdict(cell.hyperparameters))),
                           ("setting", "setting", plain(setting_fields(cell.setting)))):
        was = saved.get(key, {})
        changed = sorted(key for key in set(was) | set(now) if was.get(key) != now.get(key))
        if changed:
            return f"its {what} differ now in {', '.join(changed)}"
    if saved.get("cell_fingerprint") != fingerprint:
        return (f"its cell fingerprint was {saved.get('cell_fingerprint')}, the run's configuration now gives "
                f"{fingerprint} (budget, selection, data folder or backbone)")
    return None


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
