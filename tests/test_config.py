"""Run configs: built-ins load, overrides apply, typos and bad τ grids stop with a clear message."""

from __future__ import annotations

import pytest

from wsss.io import WsssError
from wsss.pipeline import load_run_config, tau_grid


def test_builtin_configs_load_and_overrides_apply():
    for name in ("demo", "tiny", "cartoon"):
        cfg = load_run_config(name)
        assert cfg["data"]["kind"] == "synthetic" and cfg["cam"]["method"] == "cam"
    cfg = load_run_config(
        "tiny", ["cam.train.epochs=3", "pseudo.saliency=[none,good]", "evaluate.bounds=[10,100]"]
    )
    assert cfg["cam"]["train"]["epochs"] == 3
    assert cfg["pseudo"]["saliency"] == ["none", "good"]
    assert cfg["evaluate"]["bounds"] == [10, 100]
    assert cfg["pseudo"]["sal_threshold"] == 0.2  # defaults survive the merge


@pytest.mark.parametrize(
    "typo", ["pseudo.sal_treshold=0.9", "data.eval_split=[val]", "cam.infer.scale=[1.0]", "outt=x"]
)
def test_typos_are_named(typo):
    with pytest.raises(WsssError, match=typo.split("=")[0].split(".")[-1]):
        load_run_config("tiny", [typo])


def test_tau_grid():
    assert tau_grid({"start": 0.05, "stop": 0.2, "step": 0.05}) == [0.05, 0.1, 0.15, 0.2]
    assert tau_grid([0.3, 0.1]) == [0.3, 0.1]
    for bad in ({"start": 0.1, "stop": 0.5, "step": 0}, {"start": 0.1, "stop": 0.5}, [1.5], [], ["x"]):
        with pytest.raises(WsssError, match="τ grid"):
            tau_grid(bad)
