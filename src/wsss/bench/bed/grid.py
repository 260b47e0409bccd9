"""The bed's grid: the bed config (loading, validation), its cells (method × seed, each a ``wsss
run`` config in its own folder), their order and classifier dependencies, the shard a machine runs,
and each cell's state on disk (what resume skips). Nothing here runs a cell: the executors do."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsss.bench.bed.tables import cell_rows
from wsss.config import apply_overrides, builtin_config, config_hash, deep_merge, load_yaml
from wsss.io import WsssError, read_json
from wsss.pipeline import Pipeline, load_run_config

__all__ = ["BED_DEFAULTS", "METHOD_KEYS", "Bed", "Cell", "load_bed_config"]

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
    "slurm": {},  # options of `--executor slurm` (executors/slurm.py); ignored by the others
}
METHOD_KEYS = ("method", "train", "infer", "cams", "oc", "set")
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
    from wsss.bench.bed.executors.slurm import check_slurm_options

    check_slurm_options(cfg["slurm"], where)


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

    def apply_slurm_options(self, options: dict) -> None:
        """Command-line SLURM options (``--slurm-*``) over the config's ``slurm:`` block, key by
        key (``params`` merged), so that bed.json records what the jobs were given."""
        from wsss.bench.bed.executors.slurm import check_slurm_options

        block = dict(self.cfg["slurm"] or {})
        for key, value in options.items():
            if key == "params":
                block["params"] = {**(block.get("params") or {}), **(value or {})}
            elif value is not None:
                block[key] = value
        check_slurm_options(block, f"{self.where} (with the --slurm options)")
        self.cfg["slurm"] = block

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
        """Tidy rows of finished cells, in cell order (:func:`wsss.bench.bed.tables.cell_rows`)."""
        return cell_rows(cells, self.out)


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
