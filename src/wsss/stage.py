"""The contract between a stage and its output folder, kept in one place.

Every ``wsss <stage>`` command and every step of ``wsss run`` writes into a folder
through :func:`stage_run`:

* **lock** — ``.wsss.lock`` (one per shard) holds the writer's pid and host; a second
  run into the same folder stops with one line, a lock left by a killed run (its pid is
  gone) is taken over;
* **record** — ``settings.json`` pins the stage, its settings and its inputs: the
  resolved absolute path of every input and a fingerprint of its contents (per file:
  size and modification time; sha256 for model weights);
* **skip / refuse / force** — a rerun with the same settings and unchanged inputs skips
  the outputs that exist (resume); other settings, another input path or changed input
  files stop the run with exit 2 and a line naming what differs; ``force=True``
  (``--force``) empties the folder and recomputes everything in it;
* **run.json** — :meth:`StageRun.finish` records config, versions, seed and timings.

A folder input may grow between runs (a CAM folder that gets the CAMs of more images):
only files present in both the recorded and the current fingerprint must agree, and a
file the record has that is now missing counts as a change.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsss.io import (
    WsssError,
    _json_default,
    file_digest,
    read_json,
    shard_record_name,
    write_json,
    write_run_json,
)

RECORD_NAME = "settings.json"
LOCK_PREFIX = ".wsss"
# files a stage writes about itself: never part of another stage's input fingerprint
_BOOKKEEPING = (RECORD_NAME, "run.json")


# --------------------------------------------------------------------------- fingerprints
def _is_bookkeeping(name: str) -> bool:
    return (
        name.startswith(".") or name in _BOOKKEEPING or (name.startswith("run.") and name.endswith(".json"))
    )


def folder_fingerprint(folder: Path) -> dict[str, list[int]]:
    """File name → [size, mtime_ns] of the regular files directly in ``folder`` (not the
    stage's own records, hidden files or sub-folders)."""
    out: dict[str, list[int]] = {}
    try:
        entries = list(os.scandir(folder))
    except OSError as e:
        raise WsssError(f"{folder}: cannot list the folder ({e.strerror or e})") from None
    for entry in entries:
        if _is_bookkeeping(entry.name):
            continue
        try:
            if not entry.is_file():
                continue
            st = entry.stat()
        except OSError:
            continue
        out[entry.name] = [st.st_size, st.st_mtime_ns]
    return dict(sorted(out.items()))


def input_fingerprint(path: str | os.PathLike | None, digest: bool = False) -> dict[str, Any] | None:
    """What a stage records about one input: its resolved absolute path and its contents
    (a folder's per-file sizes and mtimes; a file's size and mtime, or its sha256 when
    ``digest`` — model weights, whose identity matters more than their date)."""
    if path is None:
        return None
    p = Path(path).expanduser().resolve()
    if p.is_dir():
        return {"path": str(p), "files": folder_fingerprint(p)}
    if p.is_file():
        if digest:
            return {"path": str(p), "sha256": file_digest(p)}
        st = p.stat()
        return {"path": str(p), "file": [st.st_size, st.st_mtime_ns]}
    raise WsssError(f"{p}: input not found")


def _input_change(name: str, old: dict | None, new: dict | None) -> str | None:
    """A short description of how input ``name`` differs, or None when it is the same."""
    if old is None and new is None:
        return None
    if old is None or new is None:
        return f"input {name}: {old and old.get('path')} → {new and new.get('path')}"
    if old.get("path") != new.get("path"):
        return f"input {name}: {old.get('path')} → {new.get('path')}"
    for key in ("sha256", "file"):
        if key in old or key in new:
            if old.get(key) != new.get(key):
                return f"input {name}: {new['path']} changed since these outputs were made"
            return None
    before, now = old.get("files") or {}, new.get("files") or {}
    changed = sorted(f for f in before if f not in now or now[f] != before[f])
    if changed:
        return (
            f"input {name}: {len(changed)} of {len(before)} files in {new['path']} changed or disappeared "
            f"since these outputs were made (e.g. {changed[0]})"
        )
    return None


def _normalised(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=_json_default))


def describe_settings_diff(old: Mapping, new: Mapping, prefix: str = "") -> list[str]:
    """``key: old → new`` for every differing (nested) key."""
    out: list[str] = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += describe_settings_diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} → {b!r}")
    return out


def summarise(diffs: list[str], most: int = 3) -> str:
    """The first ``most`` differences, and how many more there are."""
    return "; ".join(diffs[:most]) + (f"; and {len(diffs) - most} more" if len(diffs) > most else "")


# --------------------------------------------------------------------------- lock
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


@contextlib.contextmanager
def folder_lock(out_dir: Path, name: str = "") -> Iterator[Path]:
    """Hold ``out_dir/.wsss[.name].lock`` for the duration; refuse if a live process holds it."""
    lock = out_dir / f"{LOCK_PREFIX}{'.' + name if name else ''}.lock"
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    # The lock appears with its content or not at all (a hard link of a written file), so a run
    # killed at any instant leaves either no lock or one that names its dead pid.
    staged = out_dir / f".{lock.name}.{me['pid']}.tmp"
    try:
        staged.write_text(json.dumps(me))
    except OSError as e:
        raise WsssError(f"{out_dir}: cannot write to the folder ({e.strerror or e})") from None
    try:
        for _attempt in range(2):
            try:
                os.link(staged, lock)
                break
            except FileExistsError:
                try:
                    holder = json.loads(lock.read_text() or "{}")
                except (OSError, ValueError):
                    holder = {}
                pid, host = holder.get("pid"), holder.get("host")
                if host == me["host"] and isinstance(pid, int) and pid != me["pid"] and not _pid_alive(pid):
                    lock.unlink(missing_ok=True)  # a killed run's lock: take it over
                    continue
                who = f"pid {pid} on {host}, since {holder.get('started', '?')}"
                raise WsssError(
                    f"{lock}: another wsss run is writing to {out_dir} ({who}); wait for it to end, "
                    "or delete the lock file if that process is gone"
                ) from None
            except OSError as e:
                raise WsssError(f"{out_dir}: cannot lock the folder ({e.strerror or e})") from None
    finally:
        staged.unlink(missing_ok=True)
    try:
        yield lock
    finally:
        lock.unlink(missing_ok=True)


# --------------------------------------------------------------------------- the stage run
def clear_folder(out_dir: Path) -> None:
    """Delete everything in ``out_dir`` but the locks (``--force``: recompute from scratch)."""
    for entry in out_dir.iterdir():
        if entry.name.startswith(LOCK_PREFIX) and entry.name.endswith(".lock"):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


@dataclass
class StageRun:
    """A stage's open output folder (see :func:`stage_run`)."""

    out_dir: Path
    stage: str
    settings: dict[str, Any]
    inputs: dict[str, Any]
    shard: tuple[int, int] = (0, 1)
    started: float = field(default_factory=time.perf_counter)

    def input_paths(self, **names: str) -> dict[str, str | None]:
        """``{key: resolved path of input name}`` for run records (``cam_dir="cams"``)."""
        return {key: (self.inputs.get(name) or {}).get("path") for key, name in names.items()}

    def finish(self, config: dict, seed: int | None = None, timings: dict | None = None,
               extra: dict | None = None) -> Path:  # fmt: skip
        """Write ``run.json`` (``run.shard<i>of<N>.json`` when sharded)."""
        summary = {k: (v or {}).get("path") for k, v in self.inputs.items()}
        return write_run_json(
            self.out_dir,
            self.stage,
            config,
            seed=seed,
            timings=timings or {"total_s": round(time.perf_counter() - self.started, 3)},
            extra={"inputs": summary, **(extra or {})},
            name=shard_record_name(self.shard),
        )


def check_record(out_dir: Path, stage: str, settings: dict, inputs: dict) -> list[str]:
    """What differs between ``out_dir``'s record and this run (empty: the outputs are ours)."""
    path = out_dir / RECORD_NAME
    if not path.is_file():
        return []
    old = read_json(path)
    if not isinstance(old, dict) or old.get("stage") != stage:
        other = old.get("stage") if isinstance(old, dict) else None
        return [f"the folder holds the outputs of stage {other!r}, not {stage!r}"]
    diffs = describe_settings_diff(old.get("settings") or {}, settings)
    old_inputs = old.get("inputs") or {}
    for name in sorted(set(old_inputs) | set(inputs)):
        change = _input_change(name, old_inputs.get(name), inputs.get(name))
        if change:
            diffs.append(change)
    return diffs


@contextlib.contextmanager
def stage_run(
    out_dir: str | os.PathLike,
    stage: str,
    settings: dict[str, Any],
    inputs: Mapping[str, str | os.PathLike | None] | None = None,
    *,
    digests: tuple[str, ...] = (),
    force: bool = False,
    shard: tuple[int, int] = (0, 1),
    lock: bool = True,
) -> Iterator[StageRun]:
    """Open ``out_dir`` for ``stage``: lock it, check (or with ``force`` clear) what it
    holds, record settings + input fingerprints, and yield a :class:`StageRun`.

    ``inputs`` maps a name to a file or folder path (None: not used); names in ``digests``
    are fingerprinted by sha256. ``lock=False`` is for processes that share the folder with
    a locking one (the other ranks of a DDP training).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise WsssError(f"{out_dir}: exists and is a file; expected an output folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WsssError(f"{out_dir}: cannot create the output folder ({e.strerror or e})") from None
    settings = _normalised(settings)
    shard_name = "" if shard == (0, 1) else f"shard{shard[0]}of{shard[1]}"
    with folder_lock(out_dir, shard_name) if lock else contextlib.nullcontext():
        prints = {name: input_fingerprint(p, digest=name in digests) for name, p in (inputs or {}).items()}
        here = out_dir.resolve()
        for name, p in prints.items():
            if p is not None and (
                Path(p["path"]) == here or (force and Path(p["path"]).is_relative_to(here))
            ):
                raise WsssError(
                    f"{out_dir}: the output folder {'is' if Path(p['path']) == here else 'holds'} the input "
                    f"{name} ({p['path']}); write the outputs to another folder"
                )
        diffs = check_record(out_dir, stage, settings, prints)
        if diffs and not force:
            shown = summarise(diffs)
            raise WsssError(
                f"{out_dir / RECORD_NAME}: this folder holds {stage} outputs made with other settings or "
                f"inputs ({shown}); "
                "rerun with --force to recompute everything in it, or use a new folder"
            )
        if force and any(out_dir.iterdir()):
            clear_folder(out_dir)
        if lock or not (out_dir / RECORD_NAME).is_file():
            write_json(out_dir / RECORD_NAME, {"stage": stage, "settings": settings, "inputs": prints})
        yield StageRun(out_dir, stage, settings, prints, shard=shard)


def dataset_settings(dataset, with_ids: bool = False) -> dict[str, Any]:
    """How a stage's settings name its dataset: kind and resolved root. A per-image output
    depends on its image, not on the split or the other ids (one CAM folder serves every
    split); ``with_ids`` adds the split and the id list's hash (training: every image counts)."""
    out = {"dataset": dataset.kind, "root": str(Path(dataset.root).expanduser().resolve())}
    if with_ids:
        out["split"] = dataset.split
        out["ids_sha1"] = hashlib.sha1("\n".join(dataset.ids).encode()).hexdigest()
    return out


# --------------------------------------------------------------------------- steps of `wsss run`
@dataclass
class StepOutcome:
    result: Any
    seconds: float
    resumed: bool


def completed_step(records: Path, name: str, config: Any, fn: Callable[[], Any], console=None) -> StepOutcome:
    """One step of a multi-stage run: skipped when ``records/<name>.json`` holds the same
    config (its recorded result and time are returned), refused (naming the differing keys)
    when it holds another, else ``fn()`` is run and recorded. The config carries everything
    upstream, input fingerprints included, so any change before a step invalidates it."""
    record_path = Path(records) / f"{name}.json"
    config = _normalised(config)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    if record_path.is_file():
        record = read_json(record_path)
        if record.get("config_hash") == digest:
            if console is not None:
                console.print(f"[dim]• {name}: done already ({record_path})[/dim]")
            return StepOutcome(record.get("result"), float(record.get("seconds", 0.0)), True)
        diffs = describe_settings_diff(record.get("config") or {}, config)
        shown = summarise(diffs)
        raise WsssError(
            f"{record_path}: stage {name!r} was completed with other settings or inputs ({shown or 'config'}); "
            "rerun with --force to recompute the whole run, or use a new `out` folder"
        )
    if console is not None:
        console.rule(f"[bold]{name}")
    t0 = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - t0
    write_json(record_path, {"stage": name, "config_hash": digest, "config": config, "seconds": seconds,
                             "result": result})  # fmt: skip
    if console is not None:
        console.print(f"[green]✓ {name}[/green] ({seconds:.1f} s)")
    return StepOutcome(result, seconds, False)
