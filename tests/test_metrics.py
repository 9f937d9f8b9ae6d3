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


def test_ece_zero_when_confidence_matches_accuracy():
    probs = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(probs, np.array([0, 1])) == 0.0
    assert expected_calibration_error(probs, np.array([1, 0])) == 1.0


def test_bootstrap_on_a_tiny_set_drops_empty_resamples_without_warnings():
    """With 2 images some resamples draw nothing; they are dropped, not averaged as NaN."""
    import warnings

    from ltbench.metrics import bootstrap_interval

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lo, hi = bootstrap_interval(np.array([1.0, 1.0]), np.array([0, 1]), 2)
    assert (lo, hi) == (1.0, 1.0)
