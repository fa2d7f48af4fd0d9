import math

import pytest

from tga_hf.eval.metrics import (
    Rate,
    binary_scores,
    bleu,
    defense_success_rate,
    exact_match,
    normalize_answer,
    over_refusal_rate,
    rouge,
    utility_scores,
    vqa_accuracy,
    wilson_interval,
)


def _wilson_by_hand(k, n, z=1.959963984540054):
    p = k / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    return centre - half, centre + half


@pytest.mark.parametrize(
    "k,n,expected",
    [
        (7, 10, (0.3967781, 0.8922087)),  # standard textbook value for 7/10
        (0, 10, (0.0, 0.2775328)),
        (10, 10, (0.7224672, 1.0)),
        (50, 100, (0.4038315, 0.5961685)),
    ],
)
def test_wilson_interval_matches_known_values(k, n, expected):
    low, high = wilson_interval(k, n)
    assert low == pytest.approx(expected[0], abs=1e-6)
    assert high == pytest.approx(expected[1], abs=1e-6)
    assert (low, high) == pytest.approx(_wilson_by_hand(k, n), abs=1e-12)


def test_wilson_interval_errors():
    with pytest.raises(ValueError, match="at least one trial"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(4, 3)


def test_dsr_per_category_hand_computed():
    refused = [True, True, False, True, False, False, True]
    categories = ["gun", "gun", "gun", "knife", "knife", "porn", "porn"]
    result = defense_success_rate(refused, categories)
    assert result.overall == Rate.of(4, 7)
    assert result.overall.rate == pytest.approx(4 / 7)
    assert list(result.per_category) == ["gun", "knife", "porn"]
    assert [(r.count, r.total) for r in result.per_category.values()] == [(2, 3), (1, 2), (1, 2)]
    low, high = _wilson_by_hand(2, 3)
    assert result.per_category["gun"].low == pytest.approx(low) and result.per_category["gun"].high == pytest.approx(
        high
    )
    as_dict = result.to_dict()
    assert as_dict["overall"]["count"] == 4 and as_dict["overall"]["total"] == 7
    assert as_dict["per_category"]["knife"]["ci95"] == pytest.approx(list(_wilson_by_hand(1, 2)))
    assert str(result.per_category["knife"]).startswith("50.0% [")


def test_over_refusal_without_categories_and_errors():
    result = over_refusal_rate([False, False, True, False])
    assert (result.overall.count, result.overall.total) == (1, 4)
    assert list(result.per_category) == ["all"]
    with pytest.raises(ValueError, match="no verdicts"):
        defense_success_rate([])
    with pytest.raises(ValueError, match="categories"):
        defense_success_rate([True, False], ["a"])


def test_exact_match_and_vqa_accuracy():
    assert normalize_answer("  The Red, circle! ") == "red circle"
    assert exact_match(["Red.", "a circle", "blue"], ["red", ["square", "Circle"], "green"]) == pytest.approx(2 / 3)
    # VQA: 2 of the references say "red" -> 2/3; 3+ -> 1; single reference -> exact match
    references = [["red", "red", "blue", "green"], ["cat", "cat", "cat", "dog"], ["yes"]]
    assert vqa_accuracy(["red", "cat", "no"], references) == pytest.approx((2 / 3 + 1 + 0) / 3)
    with pytest.raises(ValueError, match="predictions and references"):
        exact_match(["a"], [])


def test_rouge_and_bleu_offline():
    scores = rouge(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert scores == pytest.approx({"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0})
    partial = rouge(["the cat sat"], ["the cat sat on the mat"])
    assert partial["rouge1"] == pytest.approx(2 * 1.0 * 0.5 / 1.5)  # precision 1, recall 3/6
    assert bleu(["the cat sat on the mat today"], ["the cat sat on the mat today"]) == pytest.approx(100.0)
    assert bleu(["completely unrelated words here now"], ["the cat sat on the mat today"]) < 10
    # A repeated reference changes nothing, so ragged reference lists are padded.
    one = bleu(["a b c d e f", "g h i j k"], [["a b c d e f"], ["g h i j k x"]])
    ragged = bleu(["a b c d e f", "g h i j k"], [["a b c d e f"], ["g h i j k x", "g h i j k x"]])
    assert one == pytest.approx(ragged)


def test_utility_scores_selects_metrics():
    scores = utility_scores(["red", "blue"], ["red", "green"], metrics=("exact_match", "vqa_accuracy"))
    assert scores == {"exact_match": 0.5, "vqa_accuracy": 0.5}
    with pytest.raises(ValueError, match="unknown utility metrics"):
        utility_scores(["a"], ["a"], metrics=("cider",))


def test_binary_scores_hand_computed():
    scores = binary_scores([True, True, False, False, True], [True, False, True, False, True])
    assert (scores.true_positive, scores.false_positive, scores.false_negative, scores.true_negative) == (2, 1, 1, 1)
    assert scores.accuracy == pytest.approx(3 / 5)
    assert scores.precision == pytest.approx(2 / 3) and scores.recall == pytest.approx(2 / 3)
    assert scores.f1 == pytest.approx(2 / 3)
    assert binary_scores([False], [True]).precision == 0.0
