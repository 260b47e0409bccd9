from __future__ import annotations

import pickle

import numpy as np
import pytest
from scipy import stats

from wsss.data.voc import VOC_CLASSES
from wsss.metrics.groups import VOC_GROUPS, ClassGroupStats, group_table, pearson, tertile_groups


def _images():
    a = np.zeros((4, 5), np.uint8)
    a[0:2, 0:2] = 1  # class 1 alone, 4/20
    b = np.zeros((4, 5), np.uint8)
    b[0, :] = 1  # 5/20
    b[3, 0:2] = 2  # 2/20
    b[2, 4] = 255
    c = np.full((4, 5), 3, np.uint8)  # class 3 everywhere but an ignore row
    c[0, :] = 255
    c[3, 0] = 2  # 1/20
    return [a, b, c]


def test_hand_computed_statistics():
    g = ClassGroupStats(5)
    for img in _images():
        g.process(img)
    s = g.statistics()
    np.testing.assert_array_equal(s["occurrence"], [2, 2, 2, 1, 0])
    np.testing.assert_allclose(s["relative_size"][:4], [(16 / 20 + 12 / 20) / 2, (4 / 20 + 5 / 20) / 2,
                                                        (2 / 20 + 1 / 20) / 2, 14 / 20])  # fmt: skip
    np.testing.assert_allclose(s["cooccurrence"][1:4], [1 / 2, 1.0, 1.0])
    np.testing.assert_allclose(s["cardinality"][1:4], [(1 + 2) / 2, 2.0, 2.0])
    assert np.isnan(s["relative_size"][4]) and np.isnan(s["cooccurrence"][0])
    r = g.compute(np.array([0.9, 0.8, 0.5, 0.2, np.nan]))
    assert r["num_images"] == 3
    np.testing.assert_array_equal(np.diag(r["cooccurrence_counts"]), [2, 2, 2, 1, 0])
    assert r["cooccurrence_counts"][2, 3] == 1 and r["cooccurrence_counts"][1, 3] == 0
    overall = next(row for row in r["groups"] if row["kind"] == "overall" and row["name"] == "mean")
    assert overall["ids"] == [1, 2, 3]  # class 4 never seen
    # as in seed 001's tables, the mean row's %S and scores also average the background (the IoU
    # is the mIoU); O, %C, L and the σ row are over the foreground only
    assert overall["with_background"] == ["relative_size", "iou"]
    assert overall["iou"] == pytest.approx((0.9 + 0.8 + 0.5 + 0.2) / 4)
    assert overall["relative_size"] == pytest.approx((0.7 + 0.225 + 0.075 + 0.7) / 4)
    assert overall["occurrence"] == pytest.approx(5 / 3)
    std = next(row for row in r["groups"] if row["kind"] == "overall" and row["name"] == "std")
    assert std["with_background"] == []
    assert std["iou"] == pytest.approx(np.std([0.8, 0.5, 0.2], ddof=1))
    assert std["relative_size"] == pytest.approx(np.std([0.225, 0.075, 0.7], ddof=1))
    # size tertiles over classes 1..3 (%S 0.225, 0.075, 0.7): 2 small, 1 mid, 3 large
    size = {row["name"]: row["ids"] for row in r["groups"] if row["kind"] == "size"}
    assert size == {"small": [2], "mid": [1], "large": [3]}
    assert r["correlation"]["relative_size"]["iou"] == pytest.approx(
        stats.pearsonr([0.225, 0.075, 0.7], [0.8, 0.5, 0.2]).statistic
    )


def test_tertiles_keep_ties_together():
    np.testing.assert_array_equal(tertile_groups([1, 2, 3, 4, 5, 6]), [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(tertile_groups([4, 4, 4]), [0, 0, 0])
    np.testing.assert_array_equal(tertile_groups([3, 1, 2, 2]), [2, 0, 0, 0])
    assert tertile_groups([]).size == 0


def test_pearson_against_scipy():
    rng = np.random.default_rng(0)
    x, y = rng.random(12), rng.random(12)
    assert pearson(x, y) == pytest.approx(stats.pearsonr(x, y).statistic, rel=1e-12)
    x[3] = np.nan  # pairs with a NaN are left out
    assert pearson(x, y) == pytest.approx(stats.pearsonr(np.delete(x, 3), np.delete(y, 3)).statistic)
    assert np.isnan(pearson([1, 1, 1], [1, 2, 3])) and np.isnan(pearson([1.0], [2.0]))


# seed 001, Table 3 (VOC 2012 train): O, %S, %C, L and the CAM / Puzzle-CAM IoUs per class
_TABLE3 = np.array([
    [88, 11.8, 9.1, 1.1, 47.5, 61.4], [65, 6.4, 76.9, 2.2, 32.2, 38.6], [105, 11.8, 11.4, 1.2, 49.5, 71.4],
    [78, 10.8, 32.1, 1.4, 40.8, 51.3], [87, 9.5, 70.1, 2.3, 49.0, 56.0], [78, 31.5, 51.3, 1.7, 72.1, 78.4],
    [128, 15.5, 61.7, 1.9, 62.6, 70.4], [131, 28.6, 26.0, 1.3, 54.8, 83.7], [148, 10.6, 87.8, 2.4, 30.7, 27.2],
    [64, 18.0, 29.7, 1.4, 55.1, 73.6], [82, 22.5, 95.1, 2.6, 52.5, 39.2], [121, 19.8, 38.0, 1.5, 61.3, 80.8],
    [68, 19.1, 47.1, 1.6, 55.9, 69.0], [81, 19.6, 56.8, 1.7, 67.8, 73.2], [442, 15.2, 83.0, 2.1, 63.6, 50.3],
    [82, 11.2, 63.4, 2.1, 46.8, 56.3], [63, 19.7, 19.0, 1.3, 55.3, 75.9], [93, 21.6, 80.6, 2.4, 50.0, 35.5],
    [83, 26.6, 20.5, 1.2, 63.9, 68.2], [84, 15.5, 65.1, 2.1, 38.6, 33.8],
])  # fmt: skip


def test_group_table_reproduces_the_paper():
    col = {
        n: np.concatenate([[np.nan], _TABLE3[:, i]]) for i, n in enumerate(["O", "S", "C", "L", "CAM", "P"])
    }
    st = {"occurrence": col["O"], "relative_size": col["S"] / 100, "cooccurrence": col["C"] / 100,
          "cardinality": col["L"]}  # fmt: skip
    st["occurrence"][0] = 1464
    index = {n: i for i, n in enumerate(VOC_CLASSES)}
    groups = {
        kind: {g: [index[n] for n in m] for g, m in named.items()} for kind, named in VOC_GROUPS.items()
    }
    r = group_table(st, list(VOC_CLASSES), {"cam": col["CAM"] / 100, "p": col["P"] / 100}, groups)
    rows = {(row["kind"], row["name"]): row for row in r["groups"]}
    # the paper's group rows (its values are rounded to one decimal)
    paper_occurrence = {("size", "small"): 93.3, ("size", "mid"): 179.5, ("size", "large"): 88.9,
                        ("frequency", "low"): 69.3, ("frequency", "mid"): 85.0, ("frequency", "high"): 179.2,
                        ("semantic", "singleton"): 87.4, ("semantic", "person"): 442.0,
                        ("semantic", "animal"): 94.5, ("semantic", "room"): 96.0, ("semantic", "traffic"): 88.0,
                        ("overall", "mean"): 108.6}  # fmt: skip
    for key, value in paper_occurrence.items():
        assert rows[key]["occurrence"] == pytest.approx(value, abs=0.05), key
    assert rows[("size", "small")]["occurrence"] == pytest.approx(93.3, abs=0.05)
    assert rows[("size", "small")]["cam"] == pytest.approx(0.424, abs=5e-4)
    assert rows[("size", "large")]["p"] == pytest.approx(0.671, abs=5e-4)
    assert rows[("frequency", "high")]["relative_size"] == pytest.approx(0.169, abs=5e-4)
    assert rows[("semantic", "room")]["cooccurrence"] == pytest.approx(0.770, abs=5e-4)
    assert rows[("semantic", "singleton")]["cam"] == pytest.approx(0.524, abs=5e-4)
    assert rows[("overall", "std")]["occurrence"] == pytest.approx(82.0, abs=0.05)
    assert rows[("overall", "std")]["cam"] == pytest.approx(0.112, abs=5e-4)
    # correlations: inputs rounded to 0.1, so agreement to about a point
    corr = r["correlation"]
    assert corr["relative_size"]["cam"] == pytest.approx(0.703, abs=0.01)
    assert corr["cooccurrence"]["p"] == pytest.approx(-0.710, abs=0.01)
    assert corr["occurrence"]["relative_size"] == pytest.approx(-0.065, abs=0.01)
    assert corr["cooccurrence"]["cardinality"] == pytest.approx(0.976, abs=0.01)
    # co-occurrence tertiles were computed since the VOC groups do not give them
    assert ("cooccurrence", "high") in rows


def test_voc_names_select_the_paper_groups():
    g = ClassGroupStats(21, list(VOC_CLASSES))
    img = np.zeros((8, 8), np.uint8)
    img[:4] = 15
    img[4:, :2] = 9
    g.process(img)
    rows = g.compute()["groups"]
    assert {row["name"] for row in rows if row["kind"] == "semantic"} == {"person", "room"}


def test_merge_equals_single_pass_and_pickles():
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 4, size=(6, 7)).astype(np.uint8) * (rng.random((6, 7)) < 0.5) for _ in range(9)]
    single = ClassGroupStats(4)
    for img in images:
        single.process(img)
    a, b = ClassGroupStats(4), ClassGroupStats(4)
    for img in images[:5]:
        a.process(img)
    for img in images[5:]:
        b.process(img)
    a.merge(pickle.loads(pickle.dumps(b)))
    sa, ss = a.statistics(), single.statistics()
    for key in sa:
        np.testing.assert_allclose(sa[key], ss[key], rtol=1e-12, equal_nan=True)
    with pytest.raises(ValueError):
        single.compute(np.zeros(3))
