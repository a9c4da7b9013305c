"""The shipped offline metrics (evaluate modules loaded by path) equal scikit-learn's to 1e-6."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from hf_distill.metrics import classification_metrics, load_metric


def _binary(seed, n=200, ties=False):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    scores = rng.random(n) + 0.3 * y
    if ties:
        scores = np.round(scores, 1)  # many tied scores
    return y, scores


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ties", [False, True])
def test_binary_auroc_auprc_f1_equal_sklearn(seed, ties):
    y, scores = _binary(seed, ties=ties)
    two_columns = np.stack([1 - scores, scores], 1).tolist()
    auroc = load_metric("roc_auc").compute(prediction_scores=two_columns, references=y.tolist())["roc_auc"]
    auprc = load_metric("average_precision").compute(prediction_scores=two_columns, references=y.tolist())
    assert auroc == pytest.approx(roc_auc_score(y, scores), abs=1e-6)
    assert auprc["average_precision"] == pytest.approx(average_precision_score(y, scores), abs=1e-6)
    one_column = load_metric("roc_auc").compute(prediction_scores=scores[:, None].tolist(), references=y.tolist())
    assert one_column["roc_auc"] == pytest.approx(auroc, abs=1e-12)
    predictions = (scores > 0.6).astype(int)
    f1 = load_metric("f1").compute(predictions=predictions.tolist(), references=y.tolist())["f1"]
    assert f1 == pytest.approx(f1_score(y, predictions), abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_multiclass_macro_scores_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, 300)
    logits = rng.normal(size=(300, 4)) + 1.5 * np.eye(4)[y]
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    metrics = classification_metrics((logits, y))
    assert metrics["auroc"] == pytest.approx(roc_auc_score(y, probabilities, multi_class="ovr"), abs=1e-6)
    assert metrics["auprc"] == pytest.approx(average_precision_score(y, probabilities, average="macro"), abs=1e-6)
    assert metrics["f1"] == pytest.approx(f1_score(y, probabilities.argmax(1), average="macro"), abs=1e-6)
    for average in ("macro", "micro"):
        predictions = rng.integers(0, 4, 300)  # some classes with no predicted or true positive are fine
        value = load_metric("f1").compute(predictions=predictions.tolist(), references=y.tolist(), average=average)
        assert value["f1"] == pytest.approx(f1_score(y, predictions, average=average), abs=1e-6)


def test_binary_classification_metrics_from_logits_and_edge_cases():
    y, scores = _binary(5)
    logits = np.stack([np.zeros_like(scores), scores - 0.6], 1)  # P(class 1) increases with the score
    metrics = classification_metrics((logits, y))
    assert metrics["auroc"] == pytest.approx(roc_auc_score(y, logits[:, 1]), abs=1e-6)
    assert metrics["auprc"] == pytest.approx(average_precision_score(y, logits[:, 1]), abs=1e-6)
    assert metrics["f1"] == pytest.approx(f1_score(y, logits.argmax(1)), abs=1e-6)
    no_positive = f1_score([0, 0], [0, 0], zero_division=0.0)  # scikit-learn's default value, without its warning
    assert load_metric("f1").compute(predictions=[0, 0], references=[0, 0])["f1"] == no_positive
    with pytest.raises(ValueError, match="need both classes"):
        load_metric("roc_auc").compute(prediction_scores=[[0.2], [0.4]], references=[1, 1])
    with pytest.raises(ValueError, match="hf_distill ships"):
        load_metric("accuracy")
