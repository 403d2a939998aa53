"""Small file helpers every layer of the harness shares (the analysis package never imports harness: see its own)."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any


def cache_root() -> Path:
    """$HARNESS_CACHE if set, else ~/.cache/roberta-harness; created if missing. Every cache of the harness (corpora,
    binarized data, stand-in tasks, submitit's folders) lies under it."""
    root = Path(os.environ.get("HARNESS_CACHE") or Path.home() / ".cache" / "roberta-harness").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def write_json(path: Path, obj: Any) -> None:
    """Atomic: a reader sees the old file or the complete new one, never half of it (temporary name, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def zip_damage(path: Path) -> str | None:
    """Why `path` is not a whole zip archive, as torch.save writes a checkpoint, or None when it is. A file cut short
    (a copy that stopped, a full disk) has lost the central directory at its end, which zipfile reads without the
    rest: cheap at any size, and no torch to import."""
    try:
        zipfile.ZipFile(path).close()
    except (zipfile.BadZipFile, OSError) as e:
        return f"{type(e).__name__}: {e}"
    return None


def read_json(path: Path) -> dict | None:
    """The file's JSON, or None when it is missing or not (yet) valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
