"""Multi-process CAM training: 2 CPU ranks under torchrun (gloo) stay in sync, resume exactly,
only rank 0 writes, and the result is a model infer_cams loads; plus channels-last on CPU."""

from __future__ import annotations

import csv
import hashlib
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from ddp_helpers import WORKER_PRELUDE, run_torchrun, torchrun

from wsss import dist
from wsss.cam import CamTrainConfig, build_trainer, infer_cams, load_cam_model
from wsss.data import build_dataset
from wsss.io import WsssError

# Runs in each torchrun worker: trains through train_cam (which must join the process group
# itself, once, and reuse it for the later runs) with a probe method that reports what each
# rank holds at the end.
WORKER = WORKER_PRELUDE + textwrap.dedent(
    """

    from wsss import dist
    from wsss.cam import CamTrainConfig, register_cam_method, train_cam
    from wsss.cam.vanilla import VanillaCamTrainer
    from wsss.data import build_dataset

    data_root, runs, record_dir = (Path(a) for a in sys.argv[1:4])
    rank = int(os.environ["RANK"])
    record = {"written": written, "runs": {}}

    def state_hash(trainer):
        digest = hashlib.sha1(model_hash(trainer.model).encode())
        for group in trainer.optimizer.state_dict()["state"].values():
            for name in sorted(group):
                digest.update(torch.as_tensor(group[name]).contiguous().numpy().tobytes())
        return digest.hexdigest()

    @register_cam_method("cam-probe")
    class Probe(VanillaCamTrainer):
        def step(self, batch):
            self.seen.extend(batch["index"].tolist())
            self.image_channels_last.append(batch["image"].is_contiguous(memory_format=torch.channels_last))
            return super().step(batch)

        def train(self):
            self.seen, self.image_channels_last = [], []
            out = super().train()
            conv = self.model.backbone.conv1.weight
            record["runs"][self.out_dir.name] = {
                "hash": state_hash(self),
                "model_hash": model_hash(self.model),
                "seen": self.seen,
                "world": self.world_size,
                "wrapper": type(self.train_model).__name__,
                "weights_channels_last": conv.is_contiguous(memory_format=torch.channels_last),
                "images_channels_last": self.image_channels_last,
                "returned": str(out),
            }
            return out

    train_set = build_dataset("synthetic", data_root, "train")
    base = dict(backbone="resnet18", crop_size=48, batch_size=2, optimizer="adamw", lr=1e-3,
                num_workers=0, log_every=1, checkpoint_every=1000)
    train_cam(train_set, runs / "straight", CamTrainConfig(**base, epochs=3), "cam-probe", progress=False)
    record["group_kept"] = dist.is_initialized() and dist.rank_world() == (rank, 2)
    interrupted = CamTrainConfig(**{**base, "checkpoint_every": 3}, epochs=3, stop_after_steps=4)
    train_cam(train_set, runs / "resumed", interrupted, "cam-probe", progress=False)
    record["interrupted_hash"] = record["runs"].pop("resumed")["hash"]
    train_cam(train_set, runs / "resumed", CamTrainConfig(**base, epochs=3), "cam-probe", progress=False)
    cl = CamTrainConfig(**base, epochs=1, channels_last=True)
    train_cam(train_set, runs / "channels_last", cl, "cam-probe", progress=False)
    (record_dir / f"rank{rank}.json").write_text(json.dumps(record))
    """
)


def model_hash(model: torch.nn.Module) -> str:
    digest = hashlib.sha1()
    state = model.state_dict()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def two_rank_runs(voc_like, tmp_path_factory):
    """One torchrun launch (2 gloo ranks) → (runs folder, [rank 0 record, rank 1 record])."""
    tmp = tmp_path_factory.mktemp("ddp")
    worker, runs, records = tmp / "worker.py", tmp / "runs", tmp / "records"
    worker.write_text(WORKER)
    records.mkdir()
    command = torchrun(str(worker), str(voc_like), str(runs), str(records))
    result = run_torchrun(command)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return runs, [json.loads((records / f"rank{r}.json").read_text()) for r in range(2)]


def _log(path: Path) -> list[dict[str, str]]:
    with open(path / "train_log.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "time"} for row in csv.DictReader(f)]


def test_two_ranks_stay_in_sync_and_shard_the_data(two_rank_runs):
    runs, (rank0, rank1) = two_rank_runs
    for name in ("straight", "resumed", "channels_last"):
        a, b = rank0["runs"][name], rank1["runs"][name]
        assert a["world"] == b["world"] == 2 and a["wrapper"] == "DistributedDataParallel"
        assert a["hash"] == b["hash"], name  # weights, BN statistics and optimiser state bitwise equal
    assert rank0["group_kept"] and rank1["group_kept"]  # joined once, reused by the next runs
    # 8 train images, batch 2 per rank: each epoch the ranks see disjoint halves of the set
    seen0, seen1 = rank0["runs"]["straight"]["seen"], rank1["runs"]["straight"]["seen"]
    assert len(seen0) == len(seen1) == 12  # 3 epochs × 2 steps × 2 images
    for epoch in range(3):
        part0, part1 = set(seen0[4 * epoch : 4 * epoch + 4]), set(seen1[4 * epoch : 4 * epoch + 4])
        assert not part0 & part1 and part0 | part1 == set(range(8))
    run = json.loads((runs / "straight" / "run.json").read_text())
    assert run["world_size"] == 2 and run["steps"] == 6


def test_two_rank_run_resumes_bitwise(two_rank_runs):
    runs, (rank0, rank1) = two_rank_runs
    straight = rank0["runs"]["straight"]["hash"]
    assert rank0["interrupted_hash"] != straight  # the interruption did stop training early
    assert rank0["runs"]["resumed"]["hash"] == rank1["runs"]["resumed"]["hash"] == straight
    assert _log(runs / "straight") == _log(runs / "resumed")
    assert [int(r["step"]) for r in _log(runs / "resumed")] == [1, 2, 3, 4, 5, 6]


def test_only_rank_0_writes(two_rank_runs):
    runs, (rank0, rank1) = two_rank_runs
    assert not [p for p in rank1["written"] if Path(p).is_relative_to(runs)]
    written0 = {
        Path(p).relative_to(runs).as_posix() for p in rank0["written"] if Path(p).is_relative_to(runs)
    }
    for name in ("straight", "resumed", "channels_last"):
        for file in ("checkpoint.pt", "model.safetensors", "model.json", "train_log.csv", "run.json"):
            assert f"{name}/{file}" in written0


def test_two_rank_model_loads_and_infers(two_rank_runs, voc_like, tmp_path):
    runs, (rank0, _) = two_rank_runs
    model = load_cam_model(runs / "straight")
    # the saved weights are exactly what the ranks held (DDP adds no "module." prefix)
    assert model_hash(model) == rank0["runs"]["straight"]["model_hash"]
    val = build_dataset("synthetic", voc_like, "val")
    out = infer_cams(val, runs / "straight", tmp_path / "cams", scales=(1.0,), flip=False, shard=(0, 1),
                     device="cpu", progress=False)  # fmt: skip
    files = sorted(out.glob("*.npz"))
    assert len(files) == len(val)
    with np.load(files[0]) as npz:
        cam = npz["cam"].astype(np.float32)
    assert np.isfinite(cam).all() and cam.min() >= 0 and cam.max() <= 1


def test_channels_last_reaches_the_ddp_model_and_inputs(two_rank_runs):
    _, ranks = two_rank_runs
    for record in ranks:
        cl = record["runs"]["channels_last"]
        assert cl["weights_channels_last"] and cl["images_channels_last"] == [True, True]
        assert not record["runs"]["straight"]["weights_channels_last"]


def test_channels_last_training_on_cpu_matches_contiguous(voc_like, tmp_path):
    train_set = build_dataset("synthetic", voc_like, "train")
    losses = {}
    for channels_last in (False, True):
        cfg = CamTrainConfig(backbone="resnet18", crop_size=48, batch_size=4, optimizer="adamw", lr=1e-3,
                             num_workers=0, channels_last=channels_last)  # fmt: skip
        trainer = build_trainer(train_set, tmp_path / str(channels_last), cfg, progress=False)
        assert trainer.train_model is trainer.model  # single process: no wrapper
        batch = trainer.to_device(next(iter(trainer.loader(0))))
        assert batch["image"].is_contiguous(memory_format=torch.channels_last) == channels_last
        conv = trainer.model.backbone.conv1.weight
        assert conv.is_contiguous(memory_format=torch.channels_last) == channels_last
        losses[channels_last] = [float(trainer.train_step(batch)["loss"]) for _ in range(3)]
    assert np.isfinite(losses[True]).all()
    # the same computation in another memory layout: equal up to float rounding, and learning.
    # Float32 on purpose (oneDNN's channels-last kernels are what runs in practice; float64 takes
    # other paths): measured 7e-7 apart after 3 Adam steps; rtol 1e-4 scales with the losses
    # (0.09-0.7, positive, far from 0), and a layout bug changes them by far more.
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-4)
    assert losses[True][-1] < losses[True][0]


def test_dist_helpers_single_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert dist.rank_world() == (0, 1) and dist.is_main() and not dist.init_from_env()
    dist.barrier()  # no-ops without a group
    values = torch.tensor([1.5, 2.0])
    assert dist.mean_across_ranks(values) is values and dist.all_gather_object({"a": 1}) == [{"a": 1}]
    assert (
        dist.backend_for(torch.device("cpu")) == "gloo"
        and dist.backend_for(torch.device("cuda", 0)) == "nccl"
    )
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in dist.TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(WsssError, match="^WORLD_SIZE=2: RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT not set"):
        dist.init_from_env()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(WsssError, match="^WORLD_SIZE='two': not an integer"):
        dist.env_world_size()


def test_torchrun_cli_trains_with_two_ranks(voc_like, tmp_path):
    """The documented command line: ``torchrun --nproc_per_node 2 -m wsss cam train ...``."""
    out = tmp_path / "cli"
    sets = ["backbone=resnet18", "crop_size=48", "batch_size=2", "epochs=1", "optimizer=adamw",
            "num_workers=0", "channels_last=true"]  # fmt: skip
    args = ["-m", "wsss", "cam", "train", "--data", str(voc_like), "--out", str(out), "--quiet"]
    command = torchrun(*args, *[a for kv in sets for a in ("--set", kv)])
    result = run_torchrun(command)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert result.stdout.count("weights: ") == 2  # both ranks return the path rank 0 wrote
    run = json.loads((out / "run.json").read_text())
    assert run["world_size"] == 2 and run["steps"] == 2  # 8 images / 2 ranks / batch 2
    assert run["config"]["channels_last"] is True
    assert load_cam_model(out).num_classes == 3
