"""``wsss run CONFIG``: every stage in order from one config, resumable.

Stages talk only through files in the run folder (the same files the
per-stage CLI commands read and write), so a run can be stopped anywhere and
restarted: a stage whose completion record matches the current config is
skipped, a half-finished stage resumes item by item, and a stage whose config
changed under existing outputs stops with an error instead of mixing results.

Run folder::

    data/                  the synthetic dataset (when `data.synth` is set)
    cam/                   classifier checkpoint, weights, train_log.csv, run.json
    cams/                  <id>.npz CAMs for the images of every evaluated split
    saliency/<name>/<split>/  maps of the sources in the config's `saliency` section
    sweep/                 τ sweep on the sweep split: sweep.csv/json/png
    pseudo/<source>/<split>/  <id>.png pseudo labels at the source's best τ
    eval/<source>_<split>.json
    stages/<stage>.json    completion records (config hash, seconds)
    report.md, run.json
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from wsss.config import (
    apply_overrides,
    builtin_config,
    check_value,
    deep_merge,
    load_yaml,
)
from wsss.data import Dataset, build_dataset
from wsss.io import WsssError, process_context, write_json, write_run_json
from wsss.report import markdown
from wsss.stage import clear_folder, completed_step, folder_lock, input_fingerprint

console = Console(stderr=True)

DEFAULTS: dict[str, Any] = {
    "out": "runs/run",
    "seed": 0,
    "data": {
        "kind": "synthetic",
        "root": None,  # default: <out>/data when `synth` is set
        "synth": None,  # e.g. {preset: demo}; generates the embedded dataset first
        "train_split": "train",
        "eval_splits": ["train", "val_balanced"],
        "max_images": {},  # split → first N ids (keeps the demo inside its time budget)
    },
    "cam": {
        "method": "cam",
        "cams": None,  # an existing CAM folder (any supported format): no training, no inference
        "train": {},  # CamTrainConfig fields
        # geometry: reference (IRN / P-NOC inference) or resize (this toolkit before)
        "infer": {"scales": [0.5, 1.0, 1.5, 2.0], "flip": True, "geometry": "reference", "batch_size": 8},
    },
    # stage 2: name → {source: KIND, cue: {...}?, <source options>}, built into
    # saliency/<name>/<split>/; learnt sources (c2am, c2am-h) train once on the train split
    "saliency": {},
    "pseudo": {
        # "none" = background is the constant τ; else a source of `saliency` or under data/saliency/
        "saliency": ["none"],
        "taus": {"start": 0.05, "stop": 0.95, "step": 0.05},
        "sal_threshold": 0.2,
        "ignore_salient_bg": True,
        "strict_tau": False,  # True: the paper's CAM > τ with saliency (default: WSSS-BED's code, CAM >= τ)
        "sweep_split": "train",
    },
    # stage-3 refinement of every source's pseudo labels, scored as source "<source>+<step>":
    # "crf" = the dense CRF of docs/methods.md §3 on the label maps (options: refine_crf.crf params)
    "refine": {"steps": [], "crf": {}},
    "evaluate": {"bounds": None, "workers": 1},  # bounds None: the dataset's ia_bounds, else 1024/9216
    # stage 4, when `labels` is set: a saliency source of `pseudo.saliency` (its pseudo labels at the
    # best τ, made for the whole train split) or "gt" (the fully supervised reference)
    "seg": {
        "labels": None,
        "methods": ["ce"],  # losses: ce | size-weighted | size-balanced, one network each
        "train": {},  # SegTrainConfig fields
        # scales/flip null: the model's own test procedure (seed 004's for a multi-scale DeepLab-V2)
        "predict": {"scales": None, "flip": None, "crf": False, "batch_size": 8},
        "splits": ["val", "val_balanced"],
    },
}


def load_run_config(source: str | Path | dict, overrides: list[str] | None = None) -> dict:
    """A YAML path, a built-in name (``demo``, ``tiny``, ``cartoon``) or a dict → full config."""
    if isinstance(source, dict):
        user = source
    elif Path(source).suffix in (".yaml", ".yml") or Path(source).is_file():
        user = load_yaml(source)
    else:
        user = builtin_config(str(source))
    cfg = deep_merge(DEFAULTS, user)
    cfg = apply_overrides(cfg, overrides or [])
    try:
        _check_keys(cfg, DEFAULTS, "config")
    except WsssError as e:  # name the file the keys came from (or --set)
        if isinstance(source, dict):
            raise
        raise WsssError(f"{source}{' (with --set)' if overrides else ''}: {e}") from None
    return cfg


def _check_keys(cfg: dict, reference: dict, where: str) -> None:
    """Unknown keys are typos: name them. A section must be a mapping; a key whose default is
    a number, true/false or a string must be one too (``seed`` a whole number >= 0,
    ``pseudo.sal_threshold`` in [0, 1]). Sections whose default is empty (``cam.train``,
    ``data.max_images``) or not a dict are free-form here and validated by their stage."""
    unknown = sorted(set(cfg) - set(reference))
    if unknown:
        raise WsssError(f"{where}: unknown keys {unknown}; valid: {sorted(reference)}")
    for key, ref in reference.items():
        value, name = cfg.get(key), f"{where}.{key}"
        if isinstance(ref, bool | int | float | str) and key in cfg:
            value = check_value(value, type(ref), name)
            low, high = _RANGES.get(name, (None, None))
            if (low is not None and value < low) or (high is not None and value > high):
                raise WsssError(f"{name} must be in [{low}, {'∞' if high is None else high}], got {value!r}")
            cfg[key] = value
        if isinstance(ref, dict) and not isinstance(value, dict) and name not in _NOT_ONLY_MAPPINGS:
            got = "null" if value is None else f"{type(value).__name__} {value!r}"
            raise WsssError(
                f"{name}: expected a mapping (a section of keys), got {got}; "
                "omit the key to keep its defaults"
            )
        if isinstance(ref, dict) and ref and isinstance(value, dict):
            _check_keys(value, ref, name)


# sections whose default is a mapping but that may also be given otherwise (τ as a list)
_NOT_ONLY_MAPPINGS = {"config.pseudo.taus"}
_RANGES = {"config.seed": (0, None), "config.pseudo.sal_threshold": (0.0, 1.0)}


def tau_grid(spec: dict | list) -> list[float]:
    """``{start, stop, step}`` (inclusive) or an explicit list → τ values in [0, 1]."""
    try:
        if isinstance(spec, list | tuple):
            taus = [float(t) for t in spec]
        else:
            start, stop, step = float(spec["start"]), float(spec["stop"]), float(spec["step"])
            if step <= 0 or stop < start:
                raise ValueError("need step > 0 and stop >= start")
            n = int(math.floor((stop - start) / step + 1e-9)) + 1
            taus = [round(start + i * step, 6) for i in range(n)]
    except (KeyError, TypeError, ValueError) as e:
        raise WsssError(f"τ grid {spec!r}: expected start/stop/step or a list of numbers ({e})") from None
    if not taus or min(taus) < 0 or max(taus) > 1:
        raise WsssError(f"τ grid {spec!r}: values must lie in [0, 1]")
    return taus


def _saliency_scores(job: tuple) -> dict:
    """MAE / max-F / IoU of one saliency folder on one split (a process pool's unit of work)."""
    from wsss.saliency.metrics import evaluate_saliency

    sal_dir, ds, progress = job
    res = evaluate_saliency(sal_dir, ds, progress=progress)
    return {k: res[k] for k in ("mae", "max_f", "iou", "num_images")}


class Pipeline:
    """Runs the stages of one config in one folder."""

    def __init__(self, cfg: dict, progress: bool = True, force: bool = False):
        self.cfg = cfg
        self.out = Path(cfg["out"])
        self.progress = progress
        self.force = force  # --force: empty the run folder and recompute every stage
        self.timings: dict[str, float] = {}  # seconds per stage; a resumed stage keeps its recorded time
        self.resumed: list[str] = []
        self.results: dict[str, Any] = {}
        dcfg = cfg["data"]
        self.data_root = Path(dcfg["root"]) if dcfg["root"] else self.out / "data"
        external = cfg["cam"].get("cams")
        self.cam_dir = Path(external).expanduser().resolve() if external else self.out / "cams"
        self._ia_bounds: tuple[int, int] | None = None

    # ------------------------------------------------------------------ helpers
    def _stage(self, name: str, stage_cfg: Any, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` unless ``stages/<name>.json`` records it done with ``stage_cfg``."""
        step = completed_step(self.out / "stages", name, stage_cfg, fn, console if self.progress else None)
        self.timings[name] = step.seconds
        if step.resumed:
            self.resumed.append(name)
        return step.result

    def dataset(self, split: str, limited: bool = True) -> Dataset:
        """A split; ``limited`` applies ``data.max_images`` (evaluation only, never training)."""
        ds = build_dataset(self.cfg["data"]["kind"], self.data_root, split)
        limit = (self.cfg["data"].get("max_images") or {}).get(split)
        if limit and limited:
            ds.ids = ds.ids[: int(limit)]
        return ds

    def ia_bounds(self) -> tuple[int, int]:
        b = self.cfg["evaluate"].get("bounds")
        if b:
            return int(b[0]), int(b[1])
        if self._ia_bounds is None:  # reads the dataset's files: once, after the data exist
            self._ia_bounds = self.dataset(self.cfg["data"]["train_split"], limited=False).ia_bounds
        return self._ia_bounds

    def saliency_sources(self, ds: Dataset) -> dict[str, Path | None]:
        srcs = self.cfg["pseudo"]["saliency"]
        items = srcs.items() if isinstance(srcs, dict) else ((s, None) for s in srcs)
        out: dict[str, Path | None] = {}
        for name, path in items:
            if name == "none":
                out[name] = None
            else:
                built = self.out / "saliency" / name / ds.split if name in self.cfg["saliency"] else None
                d = Path(path) if path else built or ds.saliency_dir(name)
                if not d.is_dir():
                    raise WsssError(f"{d}: saliency folder for source {name!r} not found")
                out[name] = d
        return out

    # ------------------------------------------------------------------ stages
    def external_inputs(self) -> dict[str, str]:
        """A digest of each input the run reads but does not make (submitted CAMs, saliency
        folders outside the run): part of every stage's record, so changed files are noticed."""
        folders: dict[str, Path] = {}
        if self.cfg["cam"].get("cams"):
            folders["cams"] = self.cam_dir
        srcs = self.cfg["pseudo"]["saliency"]
        for name, path in srcs.items() if isinstance(srcs, dict) else ((s, None) for s in srcs):
            if name != "none" and name not in self.cfg["saliency"]:
                folders[f"saliency:{name}"] = Path(path) if path else self.data_root / "saliency" / name
        out = {}
        run_dir = self.out.resolve()
        for key, folder in folders.items():
            if folder.is_dir() and not folder.resolve().is_relative_to(run_dir):  # the run makes its own
                print_ = input_fingerprint(folder)
                blob = json.dumps(print_, sort_keys=True).encode()
                out[key] = f"{print_['path']}@{hashlib.sha256(blob).hexdigest()[:16]}"
        return out

    def run(self) -> dict:
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise WsssError(f"{self.out}: cannot create the run folder ({e.strerror or e})") from None
        with folder_lock(self.out):
            if self.force and any(self.out.iterdir()):
                clear_folder(self.out)
            return self._run()

    def _run(self) -> dict:
        t_start = time.perf_counter()
        cfg = self.cfg
        write_json(self.out / "config.json", cfg)

        # what each stage's outputs depend on: a change anywhere upstream invalidates them
        data_cfg = {k: cfg["data"][k] for k in ("kind", "root", "synth", "train_split")}
        external = self.external_inputs()
        if external:  # absent from the hashes when there are none, so older runs still resume
            data_cfg["inputs"] = external
        if cfg["data"].get("synth"):
            self._stage("synth", {"synth": cfg["data"]["synth"], "seed": cfg["seed"]}, self._synth)
        train_ds = self.dataset(cfg["data"]["train_split"], limited=False)
        train_ds.check_labels()

        cam_cfg = {
            "data": data_cfg,
            "method": cfg["cam"]["method"],
            "train": cfg["cam"]["train"],
            "seed": cfg["seed"],
        }
        eval_splits = list(dict.fromkeys([cfg["pseudo"]["sweep_split"], *cfg["data"]["eval_splits"]]))
        if cfg["cam"].get("cams"):  # submitted CAMs: they stand in for stage 1
            if not self.cam_dir.is_dir():
                raise WsssError(f"{self.cam_dir}: CAM folder (config cam.cams) not found")
            cam_cfg = {"data": data_cfg, "method": cfg["cam"]["method"], "cams": str(self.cam_dir)}
            infer_cfg = {**cam_cfg, "splits": eval_splits, "limits": cfg["data"]["max_images"]}
        else:
            self._stage("cam_train", cam_cfg, lambda: self._train(train_ds))
            infer_cfg = {
                **cam_cfg,
                "infer": cfg["cam"]["infer"],
                "splits": eval_splits,
                "limits": cfg["data"]["max_images"],
            }
            self._stage("cam_infer", infer_cfg, lambda: self._infer(eval_splits))

        sal_cfg = dict(infer_cfg)
        if cfg["saliency"]:  # absent from the hashes when unused, so older runs still resume
            sal_cfg["saliency"] = cfg["saliency"]
            self._stage("saliency", sal_cfg, lambda: self._saliency(eval_splits))
        quality_cfg = {**sal_cfg, "sources": cfg["pseudo"]["saliency"], "eval_splits": eval_splits}
        quality = self._stage("saliency_eval", quality_cfg, lambda: self._saliency_quality(eval_splits))

        sweep_ds = self.dataset(cfg["pseudo"]["sweep_split"])
        sweep_cfg = {**sal_cfg, "pseudo": cfg["pseudo"]}
        best = self._stage("sweep", sweep_cfg, lambda: self._sweep(sweep_ds))

        eval_cfg = {**sweep_cfg, "evaluate": cfg["evaluate"], "eval_splits": cfg["data"]["eval_splits"]}
        evals = self._stage("pseudo_eval", eval_cfg, lambda: self._pseudo_and_evaluate(best))

        if cfg["refine"]["steps"]:  # absent from the hashes when unused, so older runs still resume
            refine_cfg = {**eval_cfg, "refine": cfg["refine"]}
            evals = {**evals, **self._stage("refine", refine_cfg, lambda: self._refine(evals))}
        self.results = {"best_tau": best, "evaluation": evals, "saliency_quality": quality}
        if cfg["seg"]["labels"]:
            self.results["seg"] = self._seg_stages(eval_cfg, best)
        self.timings["total"] = time.perf_counter() - t_start
        self._write_report()
        write_run_json(
            self.out, "run", cfg, seed=cfg["seed"], timings=self.timings, extra={"results": self.results}
        )
        self.print_summary()
        return self.results

    def _synth(self) -> dict:
        from wsss.data.synthetic import generate

        spec = dict(self.cfg["data"]["synth"])
        preset = spec.pop("preset", "demo")
        shapes = spec.pop("shapes", None)
        generate(
            self.data_root, preset, seed=self.cfg["seed"], shapes_dir=shapes, progress=self.progress, **spec
        )
        return {"root": str(self.data_root)}

    def _train(self, ds: Dataset) -> dict:
        from wsss.cam import CamTrainConfig, train_cam

        tcfg = dict(self.cfg["cam"]["train"])
        tcfg.setdefault("seed", self.cfg["seed"])
        config = CamTrainConfig.from_dict(tcfg, source="config cam.train")
        weights = train_cam(
            ds, self.out / "cam", config, method=self.cfg["cam"]["method"], progress=self.progress
        )
        return {"weights": str(weights)}

    def _infer(self, splits: list[str], limited: bool = True) -> dict:
        from wsss.cam import infer_cams

        icfg = self.cfg["cam"]["infer"]
        n = 0
        for split in splits:
            ds = self.dataset(split, limited=limited)
            infer_cams(
                ds,
                self.out / "cam",
                self.cam_dir,
                scales=tuple(icfg["scales"]),
                flip=bool(icfg["flip"]),
                geometry=str(icfg["geometry"]),
                batch_size=int(icfg.get("batch_size", 8)),
                progress=self.progress,
            )
            n += len(ds)
        return {"images": n}

    def _saliency(self, splits: list[str], only: str | None = None, limited: bool = True) -> dict:
        """Build every configured source (or ``only`` that one) for every split; a learnt source
        is trained once, on the (limited) train split — the images whose CAMs C²AM-H takes as
        hints. ``limited=False`` covers whole splits (stage 4 trains on all train images)."""
        from wsss.saliency import build_saliency_source, make_saliency

        done: dict[str, dict] = {}
        for name, spec in self.cfg["saliency"].items():
            if only is not None and name != only:
                continue
            if not isinstance(spec, dict) or "source" not in spec:
                raise WsssError(f"config saliency.{name}: expected a mapping with a 'source' key")
            options = {k: v for k, v in spec.items() if k not in ("source", "cue")}
            kind = spec["source"]
            folder = self.out / "saliency" / name
            if kind in ("c2am", "c2am-h") and not options.get("model"):
                options["train"] = {"seed": self.cfg["seed"], **(options.get("train") or {})}
                if kind == "c2am-h":
                    options.setdefault("cams", str(self.cam_dir))
                train_ds = self.dataset(self.cfg["data"]["train_split"])
                build_saliency_source(kind, **options).prepare(train_ds, folder, self.progress)
                predict_keys = ("scales", "flip", "normalize", "device")
                options = {
                    "model": str(folder / "model"),
                    **{k: options[k] for k in predict_keys if k in options},
                }
            for split in splits:
                source = build_saliency_source(kind, **options)
                ds = self.dataset(split, limited=limited)
                make_saliency(source, ds, folder / split, cue=spec.get("cue"), progress=self.progress)
            done[name] = {"source": kind, "folder": str(folder)}
        return done

    def _saliency_quality(self, splits: list[str]) -> dict:
        """MAE / max-F / IoU of every saliency source against the GT foreground (seed 000 puts
        pseudo-label quality next to saliency quality)."""
        jobs = []
        for split in splits:
            ds = self.dataset(split)
            if not ds.ids or ds.gt_path(ds.ids[0]) is None:
                continue
            jobs += [
                (src, split, sal_dir, ds) for src, sal_dir in self.saliency_sources(ds).items() if sal_dir
            ]
        workers = min(int(self.cfg["evaluate"].get("workers", 1)), len(jobs))
        if workers > 1:  # one (source, split) per process: the same numbers, no progress bars
            with process_context().Pool(workers) as pool:
                results = pool.map(_saliency_scores, [(sal_dir, ds, False) for _, _, sal_dir, ds in jobs])
        else:
            results = [_saliency_scores((sal_dir, ds, self.progress)) for _, _, sal_dir, ds in jobs]
        out: dict[str, dict] = {}
        for (src, split, _, _), res in zip(jobs, results, strict=True):
            out.setdefault(src, {})[split] = res
        return out

    def _sweep(self, ds: Dataset) -> dict:
        from wsss.pseudo.sweep import sweep_tau, write_sweep

        p = self.cfg["pseudo"]
        result = sweep_tau(
            ds,
            self.cam_dir,
            taus=tau_grid(p["taus"]),
            saliency_dirs=self.saliency_sources(ds),
            sal_threshold=p["sal_threshold"],
            ignore_salient_bg=p["ignore_salient_bg"],
            strict_tau=bool(p["strict_tau"]),
            workers=self.cfg["evaluate"].get("workers", 1),
            device="auto",  # counted on the GPU when there is one: the same numbers
            progress=self.progress,
        )
        write_sweep(result, self.out / "sweep")
        return {src: r["best"] for src, r in result["sources"].items()}

    def _threshold_labels(self, ds: Dataset, src: str, tau: float) -> Path:
        """Algorithm 1 with the config's saliency settings into ``pseudo/<src>/<split>/``."""
        from wsss.pseudo.threshold import make_pseudo_labels

        p = self.cfg["pseudo"]
        return make_pseudo_labels(ds, self.cam_dir, self.out / "pseudo" / src / ds.split, tau,
                                  saliency_dir=self.saliency_sources(ds)[src], sal_threshold=p["sal_threshold"],
                                  ignore_salient_bg=p["ignore_salient_bg"], strict_tau=bool(p["strict_tau"]),
                                  progress=self.progress)  # fmt: skip

    def _score(self, pred_dir: Path, ds: Dataset, record: str, info: dict, keep: tuple[str, ...]) -> dict:
        """Evaluate ``pred_dir`` on ``ds`` into ``eval/<record>.json`` (the whole result plus
        ``info``); returns the ``keep`` keys, the image count and the headline scores."""
        from wsss.metrics.evaluate import evaluate_dataset

        res = evaluate_dataset(pred_dir, ds, bounds=self.ia_bounds(), workers=self.cfg["evaluate"].get("workers", 1),
                               progress=self.progress)  # fmt: skip
        res.update({**info, "num_images": len(ds)})
        write_json(self.out / "eval" / f"{record}.json", res)
        return {k: res[k] for k in (*keep, "num_images", *self.SCORES) if k in res}

    PSEUDO_KEYS = ("saliency", "split", "tau")

    def _pseudo_and_evaluate(self, best: dict) -> dict:
        out: dict[str, dict] = {}
        for split in self.cfg["data"]["eval_splits"]:
            ds = self.dataset(split)
            for src in self.saliency_sources(ds):
                tau = float(best[src]["tau"])
                pseudo_dir = self._threshold_labels(ds, src, tau)
                info = {"split": split, "saliency": src, "tau": tau}
                out[f"{src}/{split}"] = self._score(pseudo_dir, ds, f"{src}_{split}", info, self.PSEUDO_KEYS)
        return out

    REFINE_STEPS = ("crf",)

    def _refine(self, evals: dict) -> dict:
        """Each refinement step on each source's pseudo labels, scored like them; a step's
        rows carry the source name ``<source>+<step>`` and the source's τ."""
        from wsss.pseudo.crf import CrfParams
        from wsss.pseudo.refine_crf import crf_refine

        rcfg = self.cfg["refine"]
        unknown = [s for s in rcfg["steps"] if s not in self.REFINE_STEPS]
        if unknown:
            raise WsssError(f"config refine.steps: unknown {unknown}; known: {list(self.REFINE_STEPS)}")
        try:
            params = CrfParams.from_dict(rcfg["crf"])
        except WsssError as e:
            raise WsssError(f"config refine.crf: {e}") from None
        out: dict[str, dict] = {}
        for r in evals.values():
            ds = self.dataset(r["split"])
            for step in rcfg["steps"]:
                name = f"{r['saliency']}+{step}"
                labels = self.out / "pseudo" / r["saliency"] / r["split"]
                refined = crf_refine(ds, self.out / "pseudo" / name / r["split"], labels_dir=labels, params=params,
                                     progress=self.progress)  # fmt: skip
                info = {"split": r["split"], "saliency": name, "tau": r["tau"]}
                record = f"{name}_{r['split']}"
                out[f"{name}/{r['split']}"] = self._score(refined, ds, record, info, self.PSEUDO_KEYS)
        return out

    # ------------------------------------------------------------------ stage 4
    def _seg_stages(self, upstream: dict, best: dict) -> dict:
        """Pseudo labels for the whole train split, then one network per loss, each predicted
        and scored on ``seg.splits``. A stage per loss, so adding a loss to a finished run
        trains only that one."""
        scfg = self.cfg["seg"]
        src = scfg["labels"]
        if src != "gt" and src not in best:
            raise WsssError(
                f"config seg.labels: {src!r} is neither 'gt' nor a source of pseudo.saliency {sorted(best)}"
            )
        labels_cfg = {**upstream, "seg_labels": src}
        label_dir = self._stage("seg_labels", labels_cfg, lambda: self._seg_labels(src, best))["labels"]
        out: dict[str, dict] = {}
        for method in scfg["methods"]:
            train_cfg = {**labels_cfg, "seg_method": method, "seg_train": scfg["train"]}
            self._stage(f"seg_train_{method}", train_cfg, lambda m=method: self._seg_train(m, label_dir))
            eval_cfg = {**train_cfg, "predict": scfg["predict"], "splits": scfg["splits"]}
            scores = self._stage(f"seg_eval_{method}", eval_cfg, lambda m=method: self._seg_eval(m))
            out.update({f"{method}/{split}": r for split, r in scores.items()})
        return out

    def _seg_labels(self, src: str, best: dict) -> dict:
        """The pseudo labels of ``src`` at its best τ on every train image (the sweep and the
        evaluation may have used the first ``max_images`` only); None for the GT reference."""
        if src == "gt":
            return {"labels": None}
        split = self.cfg["data"]["train_split"]
        if not self.cfg["cam"].get("cams"):
            self._infer([split], limited=False)
        if src in self.cfg["saliency"]:
            self._saliency([split], only=src, limited=False)
        ds = self.dataset(split, limited=False)
        label_dir = self._threshold_labels(ds, src, float(best[src]["tau"]))
        return {"labels": str(label_dir), "tau": float(best[src]["tau"]), "images": len(ds)}

    def _seg_train(self, method: str, label_dir: str | None) -> dict:
        from wsss.seg import SegTrainConfig, train_seg

        tcfg = {"seed": self.cfg["seed"], **self.cfg["seg"]["train"], "labels": label_dir}
        config = SegTrainConfig.from_dict(tcfg, source="config seg.train")
        ds = self.dataset(self.cfg["data"]["train_split"], limited=False)
        model = train_seg(
            ds, self.out / "seg" / method / "model", config, method=method, progress=self.progress
        )
        return {"model": str(model)}

    def _seg_eval(self, method: str) -> dict:
        from wsss.seg import predict_seg

        pcfg = self.cfg["seg"]["predict"]
        model = self.out / "seg" / method / "model" / "model.safetensors"
        out: dict[str, dict] = {}
        for split in self.cfg["seg"]["splits"]:
            ds = self.dataset(split)
            pred = predict_seg(ds, model, self.out / "seg" / method / "pred" / split,
                               scales=None if pcfg["scales"] is None else tuple(pcfg["scales"]),
                               flip=None if pcfg["flip"] is None else bool(pcfg["flip"]), crf=bool(pcfg["crf"]),
                               batch_size=int(pcfg["batch_size"]),
                               progress=self.progress)  # fmt: skip
            info = {"split": split, "method": method, "labels": self.cfg["seg"]["labels"]}
            out[split] = self._score(pred, ds, f"seg-{method}_{split}", info, ("method", "labels", "split"))
        return out

    # ------------------------------------------------------------------ output
    SCORES = markdown.SCORES  # the evaluation columns of every table, in order

    def _write_report(self) -> None:
        markdown.write_run_report(self.out, self.cfg, self.data_root, self.ia_bounds(), self.results,
                                  self.timings, self.resumed)  # fmt: skip

    def print_summary(self) -> None:
        markdown.print_summary(self.cfg, self.results, self.timings, self.out)


def run_pipeline(source: str | Path | dict, overrides: list[str] | None = None, out: str | None = None,
                 progress: bool = True, force: bool = False) -> dict:  # fmt: skip
    cfg = load_run_config(source, overrides)
    if out:
        cfg["out"] = out
    return Pipeline(cfg, progress=progress, force=force).run()
