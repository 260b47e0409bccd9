"""``wsss bed CONFIG``: the benchmark bed of seed 000 — CAM methods compared under one set of
conditions (the same dataset, the same saliency maps, a swept τ, several seeds), summarised as
tables of mean ± standard error over seeds (seed 000's Table 1: CAM method × saliency source).

The bed is a grid of ordinary ``wsss run`` cells, one per (method, seed), each in its own folder
over ONE shared dataset; every saliency source is evaluated inside each cell (the pipeline sweeps
τ per source). Because a cell is exactly the pipeline users run, the bed

* resumes: a finished cell (its ``run.json`` holds results made with the same config) is skipped
  without starting the pipeline, a half-finished one resumes stage by stage inside the pipeline;
* runs cells in parallel processes (``--jobs N``, each with ``cores // N`` torch threads; the
  core budget is the CPU affinity, capped by ``OMP_NUM_THREADS`` when set);
* splits across machines: ``--shard i/N`` runs the cells whose index is ≡ i mod N (plus the
  ``cam`` cells its oc-cse / p-oc / p-noc cells need, which are deterministic, so duplicates are
  identical); copy the ``cells/`` folders together and run ``--merge`` to collect them.

Bed config (YAML)::

    out: runs/bed
    base: demo                  # built-in run config name or YAML path; every cell starts from it
    data: {kind: synthetic, synth: {preset: demo}}   # ONE shared dataset, generated once into <out>/data
    methods:                    # rows of the tables: name → {method, train, infer, cams, oc, set}
      cam: {method: cam}
      puzzle: {method: puzzle, train: {epochs: 4}}
      eps: {method: eps, train: {saliency: good}}
      mine: {cams: /path/to/cams}     # user-submitted CAMs: no training
    saliency: [none, good, poor, spectral-residual]   # columns: sources (built ones need `build:` below)
    build_saliency: {spectral-residual: {source: spectral-residual}}  # the run config's `saliency:` section
    tau: best                   # or a number, or {method: number|best}
    refine: [crf]               # optional: also score each source's labels after these steps
    seeds: [0, 1, 2]
    seg: null                   # optional: the run config's seg section, passed to every cell
    set: ["cam.train.epochs=1"] # extra --set overrides for every cell

Keys in detail:

* ``seg``: null runs no segmentation stage in the cells, even when the base config has one; a
  mapping is merged over the base's ``seg`` section (``--set seg.labels=good`` keeps the base's
  recipe) and adds a "seg" row per (loss, split) and a method × loss table per split.

* ``data`` is merged over the base config's ``data``. With ``synth`` the dataset is generated once
  into ``data.root`` (default ``<out>/data``) with ``synth.seed`` (default 0): the cells' seeds vary
  training, not the data. Giving ``root`` without ``synth`` uses an existing dataset.
* a ``methods`` entry: ``method`` (default: the entry's name) must be a registered CAM method
  unless ``cams`` is given; ``train`` / ``infer`` merge over the base's ``cam.train`` /
  ``cam.infer``; ``cams`` is a CAM folder in any supported format (the pipeline's ``cam.cams``: no
  training) — a ``{seed}`` in it gives one folder per seed, otherwise the method has a single
  cell at the first seed, since nothing in it depends on the seed; ``oc`` names the method whose
  trained ``cam/`` classifier the methods that need one (oc-cse, p-oc, p-noc) get as
  ``cam.train.oc`` at the same seed (default: the method named ``cam``); ``set`` holds
  overrides for this method's cells only.
* ``saliency``: ``none``, a folder under the dataset's ``saliency/``, or a source of
  ``build_saliency`` (or of the base's ``saliency:`` section); only the listed sources are built.
* ``tau``: ``best`` sweeps the base's ``pseudo.taus`` on the sweep split and keeps each source's
  best τ; a number fixes τ.
* ``refine``: refinement steps (the run config's ``refine.steps``; ``crf`` = the label CRF of
  docs/methods.md §3) applied to every source's pseudo labels; each adds a column ``<source>+<step>``.
* ``wsss bed CONFIG --set key=value``: a key of the bed config (``seeds=[0]``, ``out=…``) changes
  the bed; any other key (``cam.train.epochs=1``, ``pseudo.taus=[0.1,0.2]``) is appended to
  ``set``, i.e. passed to every cell.

Layout of ``out``::

    data/                           the shared dataset (when generated)
    cells/<method>/seed<k>/         a `wsss run` folder, plus cell.yaml (its full run config) and bed.log
    bed.json                        the resolved bed config
    results.csv / .json / .parquet  tidy rows: one per (method, seed, saliency, split[, loss])
    tables.md / tables.json         Table 1 per eval split, τ per seed, IA-mIoU S/M/L, segmentation
    run.json                        (run.shard<i>of<N>.json for a shard)

Numbers are deterministic given the seeds for a fixed number of torch threads per cell (the
pipeline is); a different ``--jobs`` changes the threads per cell and may change the last digits.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import copy
import csv
import io as _io
import json
import math
import multiprocessing as mp
import os
import re
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from wsss.config import apply_overrides, builtin_config, config_hash, deep_merge, load_yaml
from wsss.io import (
    WsssError,
    atomic_path,
    atomic_write_text,
    parse_shard,
    read_json,
    shard_record_name,
    write_json,
    write_run_json,
)
from wsss.metrics.stats import format_mean_sem, mean_sem
from wsss.pipeline import Pipeline, load_run_config, run_pipeline

__all__ = ["Bed", "Cell", "build_tables", "load_bed_config", "run_bed"]

BED_DEFAULTS: dict[str, Any] = {
    "out": "runs/bed",
    "base": "demo",
    "data": None,
    "methods": None,
    "saliency": None,  # None: the base's pseudo.saliency
    "build_saliency": {},
    "tau": "best",
    "refine": [],  # refinement steps of the pseudo labels (the run config's refine.steps): crf
    "seeds": [0],
    "seg": None,
    "set": [],
}
METHOD_KEYS = ("method", "train", "infer", "cams", "oc", "set")
SCORES = Pipeline.SCORES  # the pipeline's evaluation columns, in its order
COLUMNS = ("method", "seed", "saliency", "split", "tau", "kind", "loss", *SCORES, "seconds", "cell")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
_BED_PLACEHOLDER = "<bed>"


# ---------------------------------------------------------------------------- config
def load_bed_config(source: str | Path | dict, overrides: list[str] | None = None) -> tuple[dict, str]:
    """A YAML path, a built-in name (``bed_demo``) or a dict → (validated config, where it came
    from: the name that errors carry)."""
    if isinstance(source, dict):
        raw, where = copy.deepcopy(source), "bed config"
    elif Path(source).suffix in (".yaml", ".yml", ".json") or Path(source).is_file():
        raw, where = load_yaml(source), str(source)
    else:
        raw, where = builtin_config(str(source)), f"built-in bed config {str(source)!r}"
    overrides = list(overrides or [])
    top = [a.split("=", 1)[0].strip().split(".")[0] for a in overrides]
    raw = apply_overrides(raw, [a for a, k in zip(overrides, top, strict=True) if k in BED_DEFAULTS])
    cell_sets = [a for a, k in zip(overrides, top, strict=True) if k not in BED_DEFAULTS]
    unknown = sorted(set(raw) - set(BED_DEFAULTS))
    if unknown:
        raise WsssError(f"{where}: unknown keys {unknown}; valid: {sorted(BED_DEFAULTS)}")
    cfg = deep_merge(BED_DEFAULTS, {k: v for k, v in raw.items() if v is not None or k in ("seg", "data")})
    cfg["set"] = [*(cfg["set"] or []), *cell_sets]
    _validate(cfg, where)
    return cfg, where


def _validate(cfg: dict, where: str) -> None:
    """Shape checks that name the file; the cells' run configs are checked by the pipeline's
    own loader when the bed builds them."""
    from wsss.cam import CAM_METHODS

    def fail(msg: str) -> None:
        raise WsssError(f"{where}: {msg}")

    if not isinstance(cfg["out"], str) or not cfg["out"]:
        fail("out: expected a folder path")
    if not isinstance(cfg["base"], str | dict):
        fail("base: expected a built-in run config name, a YAML path or a mapping")
    if cfg["data"] is not None and not isinstance(cfg["data"], dict):
        fail("data: expected a mapping (the run config's data section)")
    methods = cfg["methods"]
    if not isinstance(methods, dict) or not methods:
        fail("methods: expected a mapping name → {method: …} with at least one entry")
    for name, entry in methods.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            fail(f"methods: {name!r} is not a usable folder name (letters, digits, _ . + -)")
        entry = entry if entry is not None else {}
        if not isinstance(entry, dict):
            fail(f"methods.{name}: expected a mapping with keys {list(METHOD_KEYS)}")
        bad = sorted(set(entry) - set(METHOD_KEYS))
        if bad:
            fail(f"methods.{name}: unknown keys {bad}; valid: {list(METHOD_KEYS)}")
        method = entry.get("method", name)
        if not entry.get("cams") and method not in CAM_METHODS:
            fail(f"methods.{name}: unknown CAM method {method!r}; known: {', '.join(sorted(CAM_METHODS))}")
        for key in ("train", "infer"):
            if entry.get(key) is not None and not isinstance(entry[key], dict):
                fail(f"methods.{name}.{key}: expected a mapping")
        if not isinstance(entry.get("set") or [], list):
            fail(f"methods.{name}.set: expected a list of key=value strings")
    seeds = cfg["seeds"]
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        fail(f"seeds: expected a non-empty list of distinct integers, got {seeds!r}")
    sal = cfg["saliency"]
    if sal is not None and (
        not isinstance(sal, list)
        or not sal
        or not all(isinstance(s, str) for s in sal)
        or len(set(sal)) < len(sal)
    ):
        fail(f"saliency: expected a non-empty list of distinct source names, got {sal!r}")
    if not isinstance(cfg["build_saliency"], dict):
        fail("build_saliency: expected a mapping name → {source: KIND, …}")
    refine = cfg["refine"]
    if not isinstance(refine, list) or any(r not in Pipeline.REFINE_STEPS for r in refine):
        fail(f"refine: expected a list of steps from {list(Pipeline.REFINE_STEPS)}, got {refine!r}")
    tau = cfg["tau"]
    per_method = tau if isinstance(tau, dict) else {}
    if isinstance(tau, dict):
        bad = sorted(set(tau) - set(methods))
        if bad:
            fail(f"tau: {bad} are not methods of this bed")
    for t in per_method.values() if per_method else [tau]:
        if t != "best" and not (isinstance(t, int | float) and not isinstance(t, bool) and 0 <= t <= 1):
            fail(f"tau: expected 'best', a number in [0, 1] or {{method: best|number}}, got {t!r}")
    if cfg["seg"] is not None and not isinstance(cfg["seg"], dict):
        fail("seg: expected null or the run config's seg section (a mapping)")
    if not isinstance(cfg["set"], list) or not all(isinstance(a, str) for a in cfg["set"]):
        fail("set: expected a list of key=value strings")


@dataclass
class Cell:
    """One (method, seed) run of the pipeline in ``folder``; ``needs`` is the cell whose trained
    classifier it uses (oc-cse, p-oc, p-noc), which must finish first."""

    index: int
    method: str
    seed: int
    folder: Path
    config: dict
    needs: str | None = None

    @property
    def name(self) -> str:
        return f"{self.method}/seed{self.seed}"


class Bed:
    """A bed config resolved into its ordered cells."""

    def __init__(self, source: str | Path | dict, overrides: list[str] | None = None):
        self.cfg, self.where = load_bed_config(source, overrides)
        self.out = Path(self.cfg["out"])
        try:
            self.base = load_run_config(self.cfg["base"])
        except WsssError as e:
            raise WsssError(f"{self.where}: base: {e}") from None
        if self.cfg["saliency"] is None:
            srcs = self.base["pseudo"]["saliency"]
            self.cfg["saliency"] = list(srcs) if isinstance(srcs, dict | list) else [srcs]
        self.sources: list[str] = list(self.cfg["saliency"])
        # table columns: every source, then every source after each refinement step
        self.columns = self.sources + [f"{s}+{r}" for r in self.cfg["refine"] for s in self.sources]
        self.synth, self.data = self._data_section()
        self.methods = {k: (v or {}) for k, v in self.cfg["methods"].items()}
        self.order = self._method_order()
        self.cells = self._plan()

    # ------------------------------------------------------------------ planning
    def _data_section(self) -> tuple[dict | None, dict]:
        user = self.cfg["data"] or {}
        data = deep_merge(self.base["data"], user)
        if "root" in user and "synth" not in user:
            data["synth"] = None
        synth = data.get("synth")
        if synth:
            if not isinstance(synth, dict):
                raise WsssError(f"{self.where}: data.synth: expected a mapping like {{preset: demo}}")
            data["root"] = str(Path(data["root"]) if data.get("root") else self.out / "data")
            data["synth"] = None
            return dict(synth), data
        if not data.get("root"):
            raise WsssError(f"{self.where}: data: give `synth` (a dataset generated here) or `root`")
        return None, data

    def _needs_classifier(self, name: str) -> bool:
        from wsss.cam import CAM_METHODS

        entry = self.methods[name]
        if entry.get("cams") or (entry.get("train") or {}).get("oc"):
            return False
        return hasattr(CAM_METHODS[entry.get("method", name)], "build_oc")

    def _provider(self, name: str) -> str | None:
        """The method whose ``cam/`` classifier ``name`` trains against, or None."""
        if not self._needs_classifier(name):
            return None
        entry = self.methods[name]
        provider = entry.get("oc")
        if provider is None:
            provider = "cam" if "cam" in self.methods else None
        if provider is None:
            raise WsssError(
                f"{self.where}: methods.{name}: {entry.get('method', name)} needs an ordinary classifier; "
                "add `cam: {method: cam}` to methods or name one with `oc: METHOD`"
            )
        if provider not in self.methods:
            raise WsssError(f"{self.where}: methods.{name}.oc: {provider!r} is not a method of this bed")
        p = self.methods[provider]
        if p.get("cams") or self._needs_classifier(provider):
            raise WsssError(
                f"{self.where}: methods.{name}.oc: {provider!r} must train a classifier itself "
                "(no `cams`, no ordinary classifier of its own)"
            )
        return provider

    def _method_order(self) -> list[str]:
        """Classifier providers first (config order otherwise), so their cells run first."""
        providers = {self._provider(m) for m in self.methods} - {None}
        return [m for m in self.methods if m in providers] + [m for m in self.methods if m not in providers]

    def _seeds(self, name: str) -> list[int]:
        cams = self.methods[name].get("cams")
        if cams and "{seed}" not in str(cams):
            return self.cfg["seeds"][:1]  # the same CAMs at every seed would only repeat one number
        return list(self.cfg["seeds"])

    def _tau(self, name: str) -> Any:
        tau = self.cfg["tau"]
        return tau.get(name, "best") if isinstance(tau, dict) else tau

    def cell_folder(self, method: str, seed: int) -> Path:
        return self.out / "cells" / method / f"seed{seed}"

    def _plan(self) -> list[Cell]:
        cells: list[Cell] = []
        for name in self.order:
            provider = self._provider(name)
            for seed in self._seeds(name):
                folder = self.cell_folder(name, seed)
                cfg, needs = self._cell_config(name, seed, folder, provider)
                try:
                    cfg = load_run_config(cfg)
                except WsssError as e:
                    raise WsssError(f"{self.where}: cell {name}/seed{seed}: {e}") from None
                cells.append(Cell(len(cells), name, seed, folder, cfg, needs))
        return cells

    def _cell_config(
        self, name: str, seed: int, folder: Path, provider: str | None
    ) -> tuple[dict, str | None]:
        entry = self.methods[name]
        cfg = copy.deepcopy(self.base)
        cfg["out"], cfg["seed"], cfg["data"] = str(folder), seed, copy.deepcopy(self.data)
        cam = cfg["cam"]
        cam["method"] = entry.get("method", name)
        cam["train"] = deep_merge(cam["train"], entry.get("train") or {})
        cam["infer"] = deep_merge(cam["infer"], entry.get("infer") or {})
        if entry.get("cams"):
            cam["cams"] = str(entry["cams"]).replace("{seed}", str(seed))
        buildable = {**(self.base.get("saliency") or {}), **self.cfg["build_saliency"]}
        cfg["saliency"] = {s: copy.deepcopy(buildable[s]) for s in self.sources if s in buildable}
        # the bed decides stage 4 for every cell: none unless its `seg` section asks for it
        seg = self.cfg["seg"]
        cfg["seg"] = deep_merge(cfg.get("seg") or {}, seg) if seg is not None else {"labels": None}
        try:
            cfg = apply_overrides(cfg, [*self.cfg["set"], *(entry.get("set") or [])])
        except WsssError as e:
            raise WsssError(f"{self.where}: set: {e}") from None
        # what defines the grid wins over `set`: the folder, the seed, the columns, a fixed τ
        cfg["out"], cfg["seed"] = str(folder), seed
        cfg["pseudo"]["saliency"] = list(self.sources)
        cfg["refine"]["steps"] = list(self.cfg["refine"])
        tau = self._tau(name)
        if tau != "best":
            cfg["pseudo"]["taus"] = [float(tau)]
        needs = None
        if provider is not None and not cfg["cam"]["train"].get("oc"):
            cfg["cam"]["train"]["oc"] = str(self.cell_folder(provider, seed) / "cam")
            needs = f"{provider}/seed{seed}"
        return cfg, needs

    def select(self, shard: tuple[int, int]) -> list[tuple[Cell, bool]]:
        """The shard's cells (index ≡ i mod N) in cell order, each with ``True`` when it is only
        here as the classifier of a selected cell (a prerequisite from another shard)."""
        i, n = shard
        chosen = {c.name for c in self.cells if c.index % n == i}
        needed = {c.needs for c in self.cells if c.name in chosen and c.needs} - chosen
        return [(c, c.name in needed) for c in self.cells if c.name in chosen | needed]

    # ------------------------------------------------------------------ state
    def status(self, cell: Cell) -> str:
        """finished (results of this config), stale (results of another config), partial, todo."""
        record = cell.folder / "run.json"
        if record.is_file():
            try:
                rec = read_json(record)
            except WsssError:
                rec = None
            if isinstance(rec, dict) and "results" in rec:
                same = _identity(rec.get("config") or {}) == _identity(cell.config)
                return "finished" if same else "stale"
        return "partial" if (cell.folder / "stages").is_dir() else "todo"

    def record(self) -> dict:
        """The resolved bed config: itself a valid bed config (``wsss bed out/bed.json``)."""
        return copy.deepcopy(self.cfg)

    def prepare_data(self, progress: bool) -> None:
        """Generate the shared synthetic dataset once (a complete one is kept as is)."""
        if self.synth is None:
            return
        from wsss.data.synthetic import generate

        spec = dict(self.synth)
        preset = spec.pop("preset", "demo")
        shapes = spec.pop("shapes", None)
        seed = int(spec.pop("seed", 0))
        generate(self.data["root"], preset, seed=seed, shapes_dir=shapes, progress=progress, **spec)

    # ------------------------------------------------------------------ collecting
    def rows(self, cells: list[Cell]) -> list[dict]:
        """Tidy rows of finished cells, in cell order."""
        rows: list[dict] = []
        for c in cells:
            rec = read_json(c.folder / "run.json")
            results = rec.get("results") or {}
            seconds = sum(float(v) for k, v in (rec.get("timings") or {}).items() if k != "total")
            base = {"method": c.method, "seed": c.seed, "seconds": seconds, "cell": _rel(c.folder, self.out)}
            for r in (results.get("evaluation") or {}).values():
                rows.append(
                    _row(
                        base,
                        saliency=r["saliency"],
                        split=r["split"],
                        tau=r.get("tau"),
                        kind="pseudo",
                        loss="",
                        scores=r,
                    )
                )
            seg_labels = str((c.config.get("seg") or {}).get("labels", ""))
            seg_tau = ((results.get("best_tau") or {}).get(seg_labels) or {}).get("tau")
            for key, r in (results.get("seg") or {}).items():
                loss, _, split = key.partition("/")
                rows.append(
                    _row(base, saliency=seg_labels, split=split, tau=seg_tau, kind="seg", loss=loss, scores=r)
                )
        return rows


def _row(base: dict, *, saliency: str, split: str, tau: Any, kind: str, loss: str, scores: dict) -> dict:
    row = {**base, "saliency": saliency, "split": split, "tau": None if tau is None else float(tau)}
    row.update(kind=kind, loss=loss)
    row.update({k: _float(scores.get(k)) for k in SCORES})
    return {k: row[k] for k in COLUMNS}


def _float(v: Any) -> float:
    return math.nan if v is None else float(v)


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _identity(cfg: dict) -> str:
    """A cell config's hash with the bed folder replaced by a placeholder, so that cells copied
    from another machine's bed folder (shards) are recognised as the same cells."""
    cfg = json.loads(json.dumps(cfg, default=str))
    out = str(cfg.get("out", ""))
    parts = Path(out).parts
    root = str(Path(*parts[:-3])) if len(parts) > 3 and parts[-3] == "cells" else None

    def norm(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: norm(x) for k, x in v.items()}
        if isinstance(v, list):
            return [norm(x) for x in v]
        if isinstance(v, str) and root and (v == root or v.startswith(root + "/")):
            return _BED_PLACEHOLDER + v[len(root) :]
        return v

    return config_hash(norm(cfg))


# ---------------------------------------------------------------------------- tables
def _stat(values: list[float]) -> dict:
    ms = mean_sem(values)
    return {"mean": ms[0], "sem": ms[1], "n": ms[2], "text": format_mean_sem(ms)}


def _unique(values: list) -> list:
    return list(dict.fromkeys(values))


def build_tables(rows: list[dict], methods: list[str], sources: list[str]) -> dict:
    """Seed 000's summaries of tidy rows: Table 1 (pseudo-label mIoU, method × source) and
    IA-mIoU S/M/L per eval split, the per-seed τ, and method × loss per segmentation split.
    Every number is a :func:`mean_sem` over seeds."""
    pseudo = [r for r in rows if r["kind"] == "pseudo"]
    seg = [r for r in rows if r["kind"] == "seg"]

    def pick(pool: list[dict], **match: Any) -> list[dict]:
        return [r for r in pool if all(r[k] == v for k, v in match.items())]

    splits = _unique([r["split"] for r in pseudo])
    table1 = {
        sp: {
            m: {s: _stat([r["miou"] for r in pick(pseudo, split=sp, method=m, saliency=s)]) for s in sources}
            for m in methods
        }
        for sp in splits
    }
    ia_keys = ("ia_miou", "ia_miou_small", "ia_miou_medium", "ia_miou_large")
    ia = {
        sp: {
            m: {
                s: {k: _stat([r[k] for r in pick(pseudo, split=sp, method=m, saliency=s)]) for k in ia_keys}
                for s in sources
            }
            for m in methods
        }
        for sp in splits
    }
    tau: dict[str, dict[str, dict[str, float | None]]] = {}
    if splits:  # τ is chosen once per (cell, source), on the sweep split: any eval split shows it
        for m in methods:
            tau[m] = {
                s: {str(r["seed"]): r["tau"] for r in pick(pseudo, split=splits[0], method=m, saliency=s)}
                for s in sources
            }
    seg_splits = _unique([r["split"] for r in seg])
    losses = _unique([r["loss"] for r in seg])
    seg_table = {
        sp: {
            m: {loss: _stat([r["miou"] for r in pick(seg, split=sp, method=m, loss=loss)]) for loss in losses}
            for m in methods
        }
        for sp in seg_splits
    }
    return {
        "methods": methods,
        "sources": sources,
        "splits": splits,
        "table1": table1,
        "tau": tau,
        "ia": ia,
        "seg_labels": _unique([r["saliency"] for r in seg]),
        "seg_losses": losses,
        "seg": seg_table,
    }


def tables_markdown(tables: dict, title: str, sweep_split: str, seeds: list[int]) -> str:
    methods, sources = tables["methods"], tables["sources"]
    lines = [
        f"# Benchmark bed: `{title}`",
        "",
        f"Seeds {seeds}; scores in percent, mean ± s.e.m. over seeds (a single value: one seed).",
        "",
    ]
    for sp in tables["splits"]:
        lines += [
            f"## Table 1: pseudo-label mIoU at the best τ (`{sp}`)",
            "",
            "| method | " + " | ".join(sources) + " |",
            "|---|" + "---|" * len(sources),
        ]
        lines += [
            f"| {m} | " + " | ".join(tables["table1"][sp][m][s]["text"] for s in sources) + " |"
            for m in methods
        ]
        lines.append("")
    if tables["tau"]:
        lines += [
            f"## τ per seed (best on `{sweep_split}` unless fixed)",
            "",
            "| method | " + " | ".join(sources) + " |",
            "|---|" + "---|" * len(sources),
        ]
        for m in methods:
            cells = [
                " / ".join(f"{t:.2f}" if t is not None else "–" for t in tables["tau"][m][s].values()) or "–"
                for s in sources
            ]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    for sp in tables["splits"]:
        lines += [
            f"## IA-mIoU by object size (`{sp}`)",
            "",
            "| method | saliency | IA-mIoU | IA-S | IA-M | IA-L |",
            "|---|---|---|---|---|---|",
        ]
        for m in methods:
            for s in sources:
                st = tables["ia"][sp][m][s]
                vals = [
                    st[k]["text"] for k in ("ia_miou", "ia_miou_small", "ia_miou_medium", "ia_miou_large")
                ]
                lines.append(f"| {m} | {s} | " + " | ".join(vals) + " |")
        lines.append("")
    losses = tables["seg_losses"]
    for sp, per_method in tables["seg"].items():
        labels = ", ".join(tables["seg_labels"])
        lines += [
            f"## Segmentation mIoU (`{sp}`, trained on `{labels}` labels)",
            "",
            "| method | " + " | ".join(losses) + " |",
            "|---|" + "---|" * len(losses),
        ]
        lines += [
            f"| {m} | " + " | ".join(per_method[m][loss]["text"] for loss in losses) + " |" for m in methods
        ]
        lines.append("")
    return "\n".join(lines)


def _write_rows(out: Path, config: dict, rows: list[dict]) -> None:
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow(
            {k: "" if r[k] is None else (repr(r[k]) if isinstance(r[k], float) else r[k]) for k in COLUMNS}
        )
    atomic_write_text(out / "results.csv", buf.getvalue())
    write_json(out / "results.json", {"config": config, "rows": rows})
    try:  # Parquet is optional: only when pyarrow is installed
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return
    table = pa.Table.from_pylist(rows, schema=_parquet_schema(pa))
    with atomic_path(out / "results.parquet") as tmp:
        pq.write_table(table, str(tmp))


def _parquet_schema(pa: Any) -> Any:
    types = {"method": pa.string(), "seed": pa.int64(), "saliency": pa.string(), "split": pa.string(),
             "kind": pa.string(), "loss": pa.string(), "cell": pa.string()}  # fmt: skip
    return pa.schema([(k, types.get(k, pa.float64())) for k in COLUMNS])


# ---------------------------------------------------------------------------- running
def _thread_budget() -> int:
    """Cores this process may use: its CPU affinity, capped by OMP_NUM_THREADS when set."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        cores = min(cores, int(env))
    return max(1, cores)


def _run_cell(config: dict, log: str, threads: int) -> dict:
    """Run one cell's pipeline with its output in ``log`` (the terminal shows the bed's
    progress only); module level so that spawned worker processes can import it."""
    import torch

    Path(log).parent.mkdir(parents=True, exist_ok=True)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    try:
        with (
            open(log, "a", encoding="utf-8") as f,
            contextlib.redirect_stdout(f),
            contextlib.redirect_stderr(f),
        ):
            print(
                f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} wsss bed: cell {config['out']} ({threads} threads)"
            )
            try:
                results = run_pipeline(config, progress=False)
            except WsssError:
                traceback.print_exc()
                raise
            except Exception as e:
                traceback.print_exc()
                raise WsssError(f"{type(e).__name__}: {e} (traceback in {log})") from None
    finally:
        torch.set_num_threads(old)
    return {"results": results, "seconds": time.perf_counter() - t0}


def _headline(results: dict) -> str:
    """mIoU of each source on the first eval split: the line printed per finished cell."""
    evals = list((results.get("evaluation") or {}).values())
    if not evals:
        return "no evaluation"
    split = evals[0]["split"]
    parts = [f"{r['saliency']} {100 * float(r['miou']):.1f}" for r in evals if r["split"] == split]
    return f"mIoU {split}: " + " · ".join(parts)


def _execute(bed: Bed, todo: list[tuple[Cell, bool]], jobs: int, progress: bool) -> dict:
    """Run the unfinished cells of ``todo``, ``jobs`` at a time; a cell that needs a classifier
    waits for its provider. Returns {"ran": [...], "skipped": [...], "failed": {name: message}}."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(file=sys.stderr)  # bound now: cells redirect sys.stderr into their logs
    status = {c.name: bed.status(c) for c, _ in todo}
    done = {n for n, s in status.items() if s == "finished"}
    done |= {c.name for c in bed.cells if c.name not in status and bed.status(c) == "finished"}
    queue = [c for c, _ in todo if status[c.name] != "finished"]
    for c, _ in todo:
        if c.name in done:
            console.print(f"[dim]• {c.name}: finished already ({c.folder})[/dim]")
    threads = max(1, _thread_budget() // jobs)
    failed: dict[str, str] = {}
    ran: list[str] = []

    columns = [
        TextColumn("[bold]bed"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("cells · {task.fields[left]} left ·"),
        TimeElapsedColumn(),
        TextColumn("· ETA"),
        TimeRemainingColumn(),
    ]
    bar = Progress(
        *columns, console=console, disable=not progress, redirect_stdout=False, redirect_stderr=False
    )
    task = bar.add_task("cells", total=len(queue), left=len(queue))

    def finish(c: Cell, outcome: dict | None, error: str | None) -> None:
        if error is None:
            done.add(c.name)
            ran.append(c.name)
            console.print(
                f"[green]✓[/green] {c.name} ({outcome['seconds']:.0f} s): {_headline(outcome['results'])}"
            )
        else:
            failed[c.name] = error
            console.print(f"[red]✗ {c.name}: {error}[/red]")
        bar.update(task, advance=1, left=bar.tasks[0].total - bar.tasks[0].completed - 1)

    def ready(c: Cell) -> bool | None:
        """True: can start; False: waits on its provider; None: its provider failed."""
        if not c.needs or c.needs in done:
            return True
        return None if c.needs in failed else False

    def log_of(c: Cell) -> str:
        return str(c.folder / "bed.log")

    def prepare(c: Cell) -> None:
        c.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(c.folder / "cell.yaml", yaml.safe_dump(c.config, sort_keys=False))

    with bar:
        if jobs == 1:
            for c in queue:
                state = ready(c)
                if not state:
                    finish(c, None, f"its classifier cell {c.needs} did not finish")
                    continue
                prepare(c)
                try:
                    finish(c, _run_cell(c.config, log_of(c), threads), None)
                except WsssError as e:
                    finish(c, None, str(e))
        else:
            ctx = mp.get_context("spawn")  # fork would copy torch's thread pools mid-flight
            with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
                running: dict[cf.Future, Cell] = {}
                while queue or running:
                    for c in list(queue):
                        if len(running) >= jobs:
                            break
                        state = ready(c)
                        if state is None:
                            queue.remove(c)
                            finish(c, None, f"its classifier cell {c.needs} did not finish")
                        elif state:
                            queue.remove(c)
                            prepare(c)
                            running[pool.submit(_run_cell, c.config, log_of(c), threads)] = c
                    if not running:  # what is left waits on cells outside this run
                        for c in list(queue):
                            queue.remove(c)
                            finish(c, None, f"its classifier cell {c.needs} is not part of this run")
                        break
                    finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                    for f in finished:
                        c = running.pop(f)
                        try:
                            finish(c, f.result(), None)
                        except Exception as e:  # a crashed worker included: report, go on
                            finish(
                                c, None, str(e) if isinstance(e, WsssError) else f"{type(e).__name__}: {e}"
                            )
    skipped = [c.name for c, _ in todo if status[c.name] == "finished"]
    return {"ran": ran, "skipped": skipped, "failed": failed, "threads_per_cell": threads}


def _print_dry_run(bed: Bed, todo: list[tuple[Cell, bool]], shard: tuple[int, int]) -> None:
    head = f"{len(todo)} cells" + (f" in shard {shard[0]}/{shard[1]}" if shard[1] > 1 else "")
    print(f"{head} of bed {bed.where} (out {bed.out}):")
    width = max((len(c.name) for c, _ in todo), default=4)
    for c, prereq in todo:
        needs = f"needs {c.needs}" if c.needs else ""
        note = " (prerequisite from another shard)" if prereq else ""
        print(f"{c.index:4d}  {c.name:<{width}}  {bed.status(c):<8}  {needs}{note}".rstrip())


def _print_table1(tables: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    if not tables["splits"]:
        return
    sp = tables["splits"][0]
    console = Console(width=None if sys.stdout.isatty() else 120)
    console.print(f"[bold]Table 1[/bold]: pseudo-label mIoU at the best τ on {sp}, mean ± s.e.m. over seeds")
    table = Table()
    table.add_column("method")
    for s in tables["sources"]:
        table.add_column(s, justify="right")
    for m in tables["methods"]:
        table.add_row(m, *(tables["table1"][sp][m][s]["text"] for s in tables["sources"]))
    console.print(table)


def run_bed(
    source: str | Path | dict,
    overrides: list[str] | None = None,
    *,
    jobs: int = 1,
    shard: str | tuple[int, int] | None = None,
    merge: bool = False,
    allow_missing: bool = False,
    dry_run: bool = False,
    progress: bool = True,
    report: bool = True,
) -> dict:
    """Run (or, with ``merge``, only collect) a bed; returns {"cells", "rows", "tables", …}.

    A shard run (N > 1) writes its cells and ``run.shard<i>of<N>.json`` only; results and tables
    come from a full run or from ``merge``, which refuse missing cells unless ``allow_missing``;
    then ``report`` writes ``out/report.html`` (:func:`wsss.report.build_report`).
    """
    t0 = time.perf_counter()
    if jobs < 1:
        raise WsssError(f"--jobs must be >= 1, got {jobs}")
    if merge and shard is not None:
        raise WsssError("--merge collects every cell; it takes no --shard")
    shard_t = parse_shard(shard) if shard is not None else (0, 1)  # never RANK/WORLD_SIZE here
    bed = Bed(source, overrides)
    todo = bed.select(shard_t)
    if dry_run:
        _print_dry_run(bed, todo, shard_t)
        return {"cells": [c.name for c, _ in todo]}

    out = bed.out
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "bed.json", bed.record())
    outcome: dict[str, Any] = {"ran": [], "skipped": [], "failed": {}}
    if not merge:
        bed.prepare_data(progress)
        outcome = _execute(bed, todo, jobs, progress)
    extra = {
        "mode": "merge" if merge else "run",
        "shard": f"{shard_t[0]}/{shard_t[1]}",
        "jobs": jobs,
        **outcome,
        "cells": {c.name: bed.status(c) for c, _ in (todo if not merge else [(c, False) for c in bed.cells])},
    }
    if shard_t[1] > 1:
        write_run_json(out, "bed", bed.record(), timings={"total": time.perf_counter() - t0}, extra=extra,
                       name=shard_record_name(shard_t))  # fmt: skip
        if outcome["failed"]:
            raise WsssError(f"{out}: {len(outcome['failed'])} cell(s) failed: {', '.join(outcome['failed'])}")
        return {"cells": [c.name for c, _ in todo], **outcome}

    finished = [c for c in bed.cells if extra["cells"][c.name] == "finished"]
    missing = [c for c in bed.cells if extra["cells"][c.name] != "finished"]
    if missing:
        listing = ", ".join(f"{c.name} ({extra['cells'][c.name]})" for c in missing)
        if not allow_missing:
            raise WsssError(
                f"{out}: {len(missing)} of {len(bed.cells)} cells not finished: {listing}; "
                "run them (or copy their shards' cells/ here), or pass --allow-missing"
            )
        print(f"warning: collecting without {len(missing)} missing cell(s): {listing}", file=sys.stderr)
    rows = bed.rows(finished)
    record = bed.record()
    _write_rows(out, record, rows)
    tables = build_tables(rows, bed.order, bed.columns)
    write_json(out / "tables.json", tables)
    md = tables_markdown(tables, str(out), bed.base["pseudo"]["sweep_split"], bed.cfg["seeds"])
    atomic_write_text(out / "tables.md", md)
    extra["missing"] = [c.name for c in missing]
    write_run_json(out, "bed", record, timings={"total": time.perf_counter() - t0}, extra=extra)
    _print_table1(tables)
    print(f"results: {out / 'results.csv'} · tables: {out / 'tables.md'}", file=sys.stderr)
    if report and rows:
        from wsss.report import build_report

        print(f"report: {build_report(out)}", file=sys.stderr)
    return {"cells": [c.name for c in bed.cells], "rows": rows, "tables": tables, **outcome}
