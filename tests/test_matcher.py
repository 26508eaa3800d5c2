import itertools
import math

import numpy as np
import pytest
import torch

from losh.errors import NonFiniteOutputs
from losh.models.losh_m.matcher import FrameTargets, LongShortMatcher, assign

LN3, LN9 = math.log(3.0), math.log(9.0)


def _brute_force(cost):
    """Minimum over the one-to-one maps of the N instances to the Q >= N queries."""
    q, n = cost.shape
    return min(sum(cost[p[j], j] for j in range(n)) for p in itertools.permutations(range(q), n))


def test_assignment_is_optimal_against_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(150):
        n = int(rng.integers(1, 5))
        q = n + int(rng.integers(0, 3))  # more queries than instances, as in the model
        cost = rng.normal(size=(q, n)).round(1)  # rounding makes ties
        rows, cols = assign(torch.from_numpy(cost))
        assert sorted(cols.tolist()) == list(range(n))  # every instance gets a query...
        assert len(set(rows.tolist())) == n and rows.tolist() == sorted(rows.tolist())  # ...its own one
        assert cost[rows.numpy(), cols.numpy()].sum() == pytest.approx(_brute_force(cost))


def test_assignment_known_case_and_ties_are_deterministic():
    cost = torch.tensor([[4.0, 1.0, 3.0], [2.0, 0.0, 5.0], [3.0, 2.0, 2.0], [9.0, 9.0, 9.0]])
    rows, cols = assign(cost)
    assert rows.tolist() == [0, 1, 2] and cols.tolist() == [1, 0, 2]
    # all queries tie: the same pairs on every call (no randomness in the solver)
    tied = torch.zeros(5, 2)
    first = assign(tied)
    assert all(torch.equal(a, b) for _ in range(3) for a, b in zip(assign(tied), first))


def test_non_finite_cost_raises_non_finite_outputs():
    with pytest.raises(NonFiniteOutputs, match="sample 3"):
        assign(torch.tensor([[0.0, 1.0], [float("nan"), 0.0], [1.0, 1.0]]), "sample 3")
    with pytest.raises(NonFiniteOutputs):
        assign(torch.tensor([[float("inf")], [0.0]]))
    # NaN mask predictions reach the matcher through its cost
    masks = torch.eye(2)
    target = FrameTargets(masks, masks.clone(), referred_index=0, size=(1, 2))
    layer = {"long": {"pred_is_referred": torch.zeros(1, 3, 2), "pred_masks": torch.full((1, 3, 1, 2), float("nan"))}}
    with pytest.raises(NonFiniteOutputs, match="sample 0"):
        LongShortMatcher()(layer, [target])


def _example():
    # 2 queries, 2 instances (instance 0 referred), masks of 2 pixels at the target resolution
    long_logits = torch.tensor([[LN3, 0.0], [0.0, 0.0]])        # p_ref 0.75, 0.5
    short_logits = torch.tensor([[0.0, 0.0], [0.0, LN3]])       # p_ref 0.5, 0.25
    long_probs = torch.tensor([[0.9, 0.1], [0.5, 0.5]])
    short_probs = torch.tensor([[0.9, 0.9], [0.1, 0.1]])
    target = FrameTargets(long_masks=torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
                          short_masks=torch.tensor([[1.0, 1.0], [0.0, 1.0]]),  # merged short mask
                          referred_index=0, size=(1, 2))
    return long_logits, long_probs, target, short_logits, short_probs


def test_long_short_matching_cost_by_hand():
    long_logits, long_probs, target, short_logits, short_probs = _example()
    cost = LongShortMatcher(cost_is_referred=2, cost_dice=5, cost_lsi=5).cost_matrix(
        long_logits, long_probs, target, short_logits, short_probs)
    # class probability of the instance's class ("referred" for instance 0, "not referred" for 1)
    cls_long = [[0.75, 0.25], [0.5, 0.5]]
    cls_short = [[0.5, 0.5], [0.25, 0.75]]
    # dice (2 p.t + 1) / (|p| + |t| + 1)
    dice_long = [[2.8 / 3.0, 1.2 / 3.0], [2.0 / 3.0, 2.0 / 3.0]]
    dice_short = [[4.6 / 4.8, 2.8 / 3.8], [1.4 / 3.2, 1.2 / 2.2]]
    # L_lsi: query 0: long (0.9, 0) short (0.9, 0.9): 1 - 1.81/1.9; query 1: long (0.5, 0.5), short 0
    lsi = [1 - 1.81 / 1.9, 1 - 1 / 2]
    expected = torch.tensor([[-2 * (cls_long[q][j] + cls_short[q][j]) - 5 * (dice_long[q][j] + dice_short[q][j])
                              + (5 * lsi[q] if j == 0 else 0.0) for j in range(2)] for q in range(2)])
    assert torch.allclose(cost, expected, atol=1e-6)


def test_mttr_cost_without_the_short_pathway():
    long_logits, long_probs, target, _, _ = _example()
    cost = LongShortMatcher(cost_is_referred=2, cost_dice=5, cost_lsi=5).cost_matrix(long_logits, long_probs, target)
    expected = torch.tensor([[-2 * 0.75 - 5 * 2.8 / 3, -2 * 0.25 - 5 * 1.2 / 3],
                             [-2 * 0.5 - 5 * 2 / 3, -2 * 0.5 - 5 * 2 / 3]])
    assert torch.allclose(cost, expected, atol=1e-6)


def test_matcher_assigns_the_query_that_predicts_each_instance():
    size = (4, 4)
    masks = torch.zeros(3, 16)
    masks[0, :4], masks[1, 4:8], masks[2, 8:12] = 1, 1, 1
    target = FrameTargets(masks, masks.clone(), referred_index=1, size=size)
    queries = 6
    mask_logits = torch.full((1, queries, 4, 4), -8.0)
    # query 4 predicts instance 0, query 1 instance 1, query 5 instance 2
    for query, instance in [(4, 0), (1, 1), (5, 2)]:
        mask_logits[0, query] = torch.where(masks[instance].view(4, 4) > 0, 8.0, -8.0)
    logits = torch.zeros(1, queries, 2)
    layer = {"long": {"pred_is_referred": logits, "pred_masks": mask_logits},
             "short": {"pred_is_referred": logits, "pred_masks": mask_logits}}
    (rows, cols), = LongShortMatcher()(layer, [target])
    assert dict(zip(cols.tolist(), rows.tolist())) == {0: 4, 1: 1, 2: 5}
    # the reference score decides between two queries with the same mask
    mask_logits[0, 3] = mask_logits[0, 1]
    logits[0, 3] = torch.tensor([4.0, -4.0])
    (rows, cols), = LongShortMatcher()(layer, [target])
    assert dict(zip(cols.tolist(), rows.tolist()))[1] == 3
