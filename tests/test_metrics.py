import numpy as np
import torch

from ltbench.metrics import evaluate_logits, expected_calibration_error, per_class_accuracy


def test_per_class_and_group_accuracy():
    # 3 classes, groups many/medium/few; class 0 all right, class 1 half, class 2 none
    labels = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 0, 1, 0, 0, 1])
    logits = torch.nn.functional.one_hot(torch.as_tensor(pred), 3).float() * 5
    m = evaluate_logits(logits, labels, groups=np.array([0, 1, 2]))
    assert np.allclose(per_class_accuracy(pred, labels, 3), [1, 0.5, 0])
    assert (m["many"], m["medium"], m["few"]) == (1.0, 0.5, 0.0)
    assert m["overall"] == 0.5


def test_per_class_average_differs_from_pooled_on_imbalanced_sets():
    labels = np.array([0] * 9 + [1])
    logits = torch.tensor([[1.0, 0.0]] * 10)
    m = evaluate_logits(logits, labels, groups=np.array([0, 2]))
    assert m["overall"] == 0.5  # pooled accuracy would be 0.9


def test_subset_masking_scores_only_covered_classes():
    # true class 3 is covered; class 0 has the highest logit but is outside the subset
    logits = torch.tensor([[9.0, 0, 0, 5.0, 0]])
    m = evaluate_logits(logits, np.array([3]), groups=np.zeros(5, int), class_subset=np.array([1, 2, 3]))
    assert m["overall"] == 1.0
    assert evaluate_logits(logits, np.array([3]), groups=np.zeros(5, int))["overall"] == 0.0


def _ece_oracle(probs, labels, n_bins=15):
    """Guo et al. 2017, Eq. 3, with their bins (lower, upper]: a loop over bins, written independently."""
    conf, acc = probs.max(1), probs.argmax(1) == labels
    edges = np.linspace(0, 1, n_bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            total += inside.mean() * abs(acc[inside].mean() - conf[inside].mean())
    return total


def test_ece_matches_the_published_definition_on_random_inputs():
    rng = np.random.default_rng(0)
    for n_classes, n_bins in ((10, 15), (3, 10), (2, 5)):
        logits = rng.normal(size=(500, n_classes)) * rng.uniform(0.1, 4, size=(500, 1))
        probs = torch.softmax(torch.as_tensor(logits), 1).numpy()
        labels = rng.integers(0, n_classes, 500)
        assert abs(expected_calibration_error(probs, labels, n_bins) - _ece_oracle(probs, labels, n_bins)) <= 1e-9
    # confidences exactly on bin edges belong to the bin below (right-closed bins)
    conf = np.repeat(np.linspace(0.5, 1.0, 16)[1:], 7)  # the edges 8/15 … 15/15 of 15 bins
    probs = np.stack([conf, 1 - conf], 1)
    labels = rng.integers(0, 2, len(conf))
    assert abs(expected_calibration_error(probs, labels) - _ece_oracle(probs, labels)) <= 1e-9
    assert expected_calibration_error(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 1])) == 0.0


def test_bootstrap_on_a_tiny_set_drops_empty_resamples_without_warnings():
    """With 2 images some resamples draw nothing; they are dropped, not averaged as NaN."""
    import warnings

    from ltbench.metrics import bootstrap_interval

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lo, hi = bootstrap_interval(np.array([1.0, 1.0]), np.array([0, 1]), 2)
    assert (lo, hi) == (1.0, 1.0)


# -- shot-group protocols ----------------------------------------------------------------
def test_group_boundaries_at_exactly_20_and_100_under_both_protocols():
    from ltbench.metrics import FEW, MANY, MEDIUM, shot_groups, thresholds

    counts = np.array([101, 100, 21, 20, 19])
    std = shot_groups(counts, *thresholds({}))  # standard: many > 100, few < 20
    assert std.tolist() == [MANY, MEDIUM, MEDIUM, MEDIUM, FEW]
    lpt = shot_groups(counts, *thresholds({"groups": "lpt"}))  # official LPT: few (0, 20], medium (20, 100]
    assert lpt.tolist() == [MANY, MEDIUM, MEDIUM, FEW, FEW]
    assert thresholds({"groups": "lpt", "few": 5, "many": 50}) == (50, 6)


def test_groups_come_from_training_counts_not_test_counts():
    """Train and test counts disagree on every group: the groups must follow train."""
    from ltbench.data.base import ArraySplit, LTDataset

    def split(counts):
        labels = np.repeat(np.arange(len(counts)), counts)
        return ArraySplit(np.zeros((len(labels), 2, 2, 3), np.uint8), labels)

    data = LTDataset("toy", ["a", "b", "c", "d"], train=split([101, 100, 20, 19]), val=split([1, 1, 1, 1]),
                     test=split([5, 150, 150, 30]))
    assert data.shot_groups().tolist() == [0, 1, 1, 2]
    data.many_threshold, data.few_threshold = thresholds_lpt = (100, 21)
    assert data.shot_groups().tolist() == [0, 1, 2, 2], thresholds_lpt


def test_places_lt_group_sizes_under_both_protocols():
    """The shipped Places-LT train file: 131 / 163 / 71 classes under `standard`, 131 / 157 / 77 under
    `lpt` (six classes have exactly 20 training images)."""
    from ltbench.data.splitfile import PACKAGED, find_file, read_split_file
    from ltbench.metrics import group_sizes, shot_groups, thresholds

    labels = read_split_file(find_file(PACKAGED / "places_lt" / "Places_LT_train.txt"), ".", 365).labels
    counts = np.bincount(labels, minlength=365)
    assert group_sizes(shot_groups(counts, *thresholds({}))) == {"many": 131, "medium": 163, "few": 71}
    assert group_sizes(shot_groups(counts, *thresholds({"groups": "lpt"}))) == {"many": 131, "medium": 157, "few": 77}
