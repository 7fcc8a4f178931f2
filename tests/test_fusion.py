import numpy as np

from ragkit.fusion import merge_topk, reciprocal_rank_fusion


def exact_topk(scores: np.ndarray, ids: np.ndarray, k: int):
    order = np.lexsort((ids, -scores))[:k]
    return scores[order], ids[order]


def test_merge_equals_global_sort_over_random_shards():
    rng = np.random.default_rng(3)
    for _ in range(50):
        nq, k, shards = 4, 7, rng.integers(1, 5)
        all_ids = rng.permutation(1000)[:60].astype(np.int64)
        all_scores = rng.integers(0, 10, size=(nq, 60)).astype(np.float32)  # many ties
        parts = []
        for part in np.array_split(np.arange(60), shards):
            local = []
            for q in range(nq):
                s, i = exact_topk(all_scores[q, part], all_ids[part], k)
                pad = k - len(s)
                local.append((np.pad(s, (0, pad), constant_values=-np.inf), np.pad(i, (0, pad), constant_values=-1)))
            parts.append((np.stack([x[0] for x in local]), np.stack([x[1] for x in local])))
        scores, ids = merge_topk(parts, k)
        for q in range(nq):
            s, i = exact_topk(all_scores[q], all_ids, k)
            np.testing.assert_array_equal(ids[q], i)
            np.testing.assert_array_equal(scores[q], s)


def test_merge_pads_and_dedupes():
    a = (np.array([[0.9, 0.5]], np.float32), np.array([[7, 3]]))
    b = (np.array([[0.8, -np.inf]], np.float32), np.array([[7, -1]]))
    scores, ids = merge_topk([a, b], 4)
    assert ids.tolist() == [[7, 3, -1, -1]]
    assert scores[0, 0] == np.float32(0.9) and np.isinf(scores[0, 2])


def test_rrf_prefers_items_ranked_high_in_both():
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["c", "a", "d"]], k=4, constant=60)
    assert [item for item, _ in fused][:2] == ["a", "c"]
    assert fused[0][1] == 1 / 61 + 1 / 62
    assert {item for item, _ in fused} == {"a", "b", "c", "d"}
