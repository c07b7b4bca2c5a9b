"""Constrained assignment and linking (two instances of one panel are two characters) and calibration."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import pdist, squareform
from sklearn.cluster import AgglomerativeClustering

from reid.core.assign import (
    assign_window,
    cluster_conflicts,
    constrained_agglomerative,
    link_windows,
    panel_conflicts,
)
from reid.core.calibration import (
    bootstrap_se,
    calibrate,
    choose_threshold,
    grid_scores,
    link_threshold_rule,
    loosest_window_threshold,
    loosest_within_one_se,
)
from reid.core.data.ids import panel_id


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("method", ["average", "complete", "single"])
@pytest.mark.parametrize("seed", range(3))
def test_without_constraints_equals_sklearn(method: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    points = unit(np.repeat(rng.normal(size=(5, 8)), 4, axis=0) + rng.normal(scale=0.4, size=(20, 8)))
    got = constrained_agglomerative(squareform(pdist(points)), 0.9, method)
    want = AgglomerativeClustering(n_clusters=None, distance_threshold=0.9, linkage=method).fit_predict(points)
    seen: dict = {}
    assert got.tolist() == [seen.setdefault(x, len(seen)) for x in want.tolist()]


def test_two_characters_of_one_panel_are_never_merged() -> None:
    # Two look-alike characters side by side in panel p0 (almost the same embedding), and one of them again
    # in p1: unconstrained, all three merge; constrained, the two of p0 stay apart and p1 joins its nearest.
    a, a_twin, a_again = [1.0, 0.0, 0.0], [0.99, 0.14, 0.0], [0.98, 0.0, 0.2]
    points = np.array([a, a_twin, a_again])
    panels = ["s_0_0", "s_0_0", "s_0_1"]
    assert assign_window(points, 0.82).tolist() == [0, 0, 0]
    got = assign_window(points, 0.82, panels=panels)
    assert got[0] != got[1]
    assert got[2] == got[0]  # a_again is closer to a than to a_twin


def test_constraint_propagates_through_merges() -> None:
    # x (panel A) and y (panel B) merge first; z (panel A, like y) may then not join them (x is in A too).
    points = unit(np.array([[1.0, 0.0], [1.0, 0.05], [1.0, 0.12]]))
    got = assign_window(points, 0.5, panels=["A", "B", "A"])
    assert got[0] == got[1] and got[2] != got[0]


def test_same_instance_in_two_windows_is_no_conflict() -> None:
    conflicts = panel_conflicts(["p", "p", "q"], instances=["i1", "i1", "i2"])
    assert not conflicts.any()
    assert panel_conflicts(["p", "p"], instances=["i1", "i2"])[0, 1]
    assert cluster_conflicts([{"p": "i1"}, {"p": "i1"}, {"p": "i2"}]).tolist() == [
        [False, False, True], [False, False, True], [True, True, False]]


def test_link_windows_constrained_refuses_two_characters_of_one_panel() -> None:
    # Window W1 has characters c1 and c2 in panel p (distinct clusters); window W2 has c1 again. The window
    # clusters all look alike: unconstrained linking joins c1, c2 and c1'; constrained keeps c2 apart and
    # every window cluster still gets exactly one series identity.
    points = unit(np.array([[1.0, 0.0], [1.0, 0.1], [1.0, 0.02]]))
    window_labels = np.array([0, 1, 0])
    window_ids = np.array(["W1", "W1", "W2"])
    series = np.array([7, 7, 7])
    members = [{"p": "c1"}, {"p": "c2"}, {"q": "c1'"}]
    free = link_windows(points, window_labels, window_ids, series, 0.82)
    assert len(set(free.tolist())) == 1
    got = link_windows(points, window_labels, window_ids, series, 0.82, members=members)
    assert got[0] != got[1] and got[2] == got[0]
    with pytest.raises(ValueError, match="members"):
        link_windows(points, window_labels, window_ids, series, 0.82, members=members[:2])


def test_calibration_finds_the_gap_between_positive_and_negative_distances() -> None:
    # Every window has 3 characters x 2 instances; same-character pairs are 0.40 apart, different characters at
    # least ~1.0: every threshold in (0.40, ~1.0] is perfect, and the middle of that run is chosen.
    rng = np.random.default_rng(0)
    rows, labels, groups, panels = [], [], [], []
    for w in range(6):
        basis = np.linalg.qr(rng.normal(size=(8, 8)))[0]
        for c in range(3):
            centre = basis[c]
            other = basis[3 + c]
            for k, sign in enumerate((1, -1)):
                rows.append(centre * np.sqrt(1 - 0.04) + sign * 0.2 * other)  # pair distance 0.40
                labels.append(w * 10 + c)
                groups.append(w)
                panels.append(panel_id(w, k, c))
    emb, labels, groups = np.array(rows), np.array(labels), np.array(groups)
    rows_ = grid_scores(emb, labels, groups, np.round(np.arange(0.1, 1.91, 0.05), 3), ("average",))
    perfect = [r["threshold"] for r in rows_ if r["AMI"] > 0.999]
    assert min(perfect) == pytest.approx(0.45) and max(perfect) <= 1.45
    chosen = choose_threshold(rows_)
    assert chosen["threshold"] == pytest.approx(perfect[(len(perfect) - 1) // 2])
    record = calibrate(emb, labels, groups, panels)
    assert record["threshold"] == pytest.approx(chosen["threshold"])
    assert record["threshold"] <= record["link_threshold"] <= 1.9
    assert record["window_AMI"] > 0.999 and record["link_pair_f1"] > 0.999


def test_the_link_threshold_is_never_tighter_than_the_window_threshold() -> None:
    """Linking compares the instance distances the window threshold separates; a link threshold below it (as the
    labelled pairs chose on the 51-test-sequence corpus: 0.85 under 1.15) keeps one character's windows apart."""
    assert link_threshold_rule(0.85, 1.15) == (1.15, "window threshold (floor)")
    assert link_threshold_rule(1.3, 1.15) == (1.3, "labelled pairs, loosest within one standard error of the best")
    assert link_threshold_rule(1.15, 1.15)[0] == 1.15
    # ...nor above the loosest window threshold within one standard error of the best window score
    assert link_threshold_rule(1.9, 1.05, 1.35) == (1.35, "loosest window threshold within one standard error "
                                                          "(ceiling)")
    rows = [{"linkage": "average", "threshold": t, "AMI": a, "AMI_se": 0.03}
            for t, a in ((0.9, 0.75), (1.05, 0.88), (1.2, 0.87), (1.35, 0.84), (1.4, 0.72), (1.9, 0.69))]
    assert loosest_window_threshold(rows) == 1.2  # 0.84 is more than 0.03 below 0.88
    assert loosest_window_threshold([{**r, "AMI_se": 0.05} for r in rows]) == 1.35


def test_the_link_rule_takes_the_loosest_threshold_within_one_standard_error() -> None:
    """11 validation sequences, per-sequence (tp, fp, fn) pair counts. At 0.9 six are perfect and five are not
    (pair F1 0.846, a bootstrap standard error of ~0.04); 1.2 is 0.013 below it and is taken; 1.5 is 0.18 below
    and is not. When every sequence scores the same the error is 0 and only the best qualifies."""

    def row(threshold, counts):
        counts = np.asarray(counts)
        tp, fp, fn = counts.sum(axis=0)
        return {"threshold": threshold, "pair_f1": 2 * tp / (2 * tp + fp + fn), "counts": counts}

    noisy = [row(0.9, [[20, 0, 0]] * 6 + [[20, 8, 8]] * 5), row(1.2, [[20, 4, 4]] * 11),
             row(1.5, [[20, 10, 10]] * 11)]
    assert 0.02 < bootstrap_se(noisy[0]["counts"]) < 0.08
    chosen = loosest_within_one_se(noisy)
    assert chosen["threshold"] == 1.2 and chosen["pair_f1_best"] == pytest.approx(440 / 520)
    exact = [row(0.9, [[20, 3, 3]] * 11), row(1.2, [[20, 4, 4]] * 11)]
    assert bootstrap_se(exact[0]["counts"]) < 1e-12 and loosest_within_one_se(exact)["threshold"] == 0.9


def test_link_ties_prefer_the_loosest_threshold() -> None:
    rows = [{"linkage": "average", "threshold": t, "pair_f1": f} for t, f in
            ((0.5, 0.8), (0.7, 0.9), (0.9, 0.9), (1.1, 0.9), (1.3, 0.7))]
    assert choose_threshold(rows, "pair_f1")["threshold"] == 0.9
    assert choose_threshold(rows, "pair_f1", prefer="largest")["threshold"] == 1.1
