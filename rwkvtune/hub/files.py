"""Hub directory file names and writes that never leave a half-written file or directory behind.

Every file is written to a temporary name in the same directory and renamed into place (``os.replace``
is atomic on POSIX), so a crash leaves either the old file or the new one. A whole directory is built
under a temporary name and renamed the same way.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

CONFIG_FILE = "config.json"
WEIGHTS_FILES = {"pth": "model.pth", "safetensors": "model.safetensors"}
VOCAB_FILE = "vocab.txt"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
GENERATION_CONFIG_FILE = "generation_config.json"


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` and move the result to ``path`` in one step (same directory)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes owner-only files; use the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, data: dict[str, Any]) -> None:
    """Write ``data`` as indented UTF-8 JSON, atomically."""
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON object; a malformed file raises ``ValueError`` naming it."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); fix or delete it") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


@contextlib.contextmanager
def staged_directory(output_dir: str | os.PathLike, *, overwrite: bool) -> Iterator[Path]:
    """Yield an empty temporary directory that becomes ``output_dir`` when the block succeeds.

    An existing ``output_dir`` is an error unless ``overwrite``; then it is replaced only after the new
    directory is complete. On any failure the temporary directory is removed and nothing else changes.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not overwrite:
        raise FileExistsError(f"output directory {output_dir} already exists; pass --overwrite "
                              "(overwrite=True) to replace it, or choose another directory")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", suffix=".tmp", dir=output_dir.parent))
    try:
        yield staging
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes an owner-only directory
        if output_dir.exists():
            _replace_directory(staging, output_dir)
        else:
            os.replace(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _replace_directory(new: Path, old: Path) -> None:
    """Swap ``new`` in for ``old`` (two renames); ``old`` is restored if the second rename fails."""
    retired = Path(tempfile.mkdtemp(prefix=f".{old.name}.", suffix=".old", dir=old.parent))
    os.replace(old, retired / old.name)
    try:
        os.replace(new, old)
    except BaseException:
        os.replace(retired / old.name, old)
        retired.rmdir()
        raise
    shutil.rmtree(retired)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
