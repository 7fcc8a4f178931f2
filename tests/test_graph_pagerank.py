"""Personalized PageRank and best-path relaxation as pure functions, checked against networkx and brute force."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp

from ragkit.graph.pagerank import column_stochastic, max_product, personalized_pagerank


def weighted_graph(seed: int) -> nx.DiGraph:
    rng = np.random.default_rng(seed)
    graph = nx.gnp_random_graph(40, 0.08, seed=seed, directed=True)
    graph.add_nodes_from([40, 41])  # dangling nodes: no out-edges
    graph.add_edge(3, 40)
    for u, v in graph.edges:
        graph.edges[u, v]["weight"] = float(rng.uniform(0.1, 2.0))
    return graph


def as_transition(graph: nx.DiGraph) -> sp.csc_matrix:
    n = graph.number_of_nodes()
    # networkx: A[u, v] = weight of u -> v; ours wants A[target, source]
    adjacency = nx.to_scipy_sparse_array(graph, nodelist=range(n), weight="weight").T
    return column_stochastic(adjacency)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("damping", [0.5, 0.85])
def test_matches_networkx(seed: int, damping: float) -> None:
    graph = weighted_graph(seed)
    n = graph.number_of_nodes()
    seeds = np.zeros(n)
    seeds[[0, 7, 40]] = [1.0, 2.5, 0.5]
    ours = personalized_pagerank(as_transition(graph), seeds, damping, iterations=500, tolerance=1e-13)
    reference = nx.pagerank(
        graph, alpha=damping, personalization={i: seeds[i] for i in range(n)}, weight="weight", tol=1e-13, max_iter=1000
    )
    np.testing.assert_allclose(ours, [reference[i] for i in range(n)], atol=1e-10)
    assert ours.sum() == pytest.approx(1.0)


def test_pruned_walk_is_close_and_ranks_alike() -> None:
    graph = weighted_graph(3)
    seeds = np.zeros(graph.number_of_nodes())
    seeds[5] = 1.0
    transition = as_transition(graph)
    exact = personalized_pagerank(transition, seeds, 0.5, 200, 1e-13)
    pruned = personalized_pagerank(transition, seeds, 0.5, 200, 1e-13, prune=1e-4)
    assert np.abs(exact - pruned).sum() < 0.01
    top = np.argsort(-exact)[:5]
    assert list(np.argsort(-pruned)[:5]) == list(top)


def test_edge_prune_stops_a_small_residual_at_a_node_of_many_edges() -> None:
    # seed 0 -> 1 (strong) and 0 -> 2 (weak); 2 -> 3..102 (a hub of 100 edges); 1 -> 103
    rows, cols, vals = [1, 2, 103], [0, 0, 1], [1.0, 0.05, 1.0]
    rows += list(range(3, 103))
    cols += [2] * 100
    vals += [1.0] * 100
    transition = column_stochastic(sp.coo_matrix((vals, (rows, cols)), shape=(104, 104)))
    seeds = np.eye(104)[0]
    exact = personalized_pagerank(transition, seeds, 0.85, 50, 1e-12)
    pruned = personalized_pagerank(transition, seeds, 0.85, 50, 1e-12, edge_prune=1e-3)
    assert exact[3:103].min() > 0 and not pruned[3:103].any()  # the hub's 0.04 residual would put 4e-4 per edge
    assert list(np.argsort(-pruned)[:3]) == list(np.argsort(-exact)[:3]) == [0, 1, 103]  # the strong path stays
    graph = weighted_graph(3)
    seeds = np.eye(graph.number_of_nodes())[5]
    full = personalized_pagerank(as_transition(graph), seeds, 0.5, 200, 1e-13)
    approx = personalized_pagerank(as_transition(graph), seeds, 0.5, 200, 1e-13, edge_prune=1e-4)
    assert np.abs(full - approx).sum() < 0.01
    assert list(np.argsort(-approx)[:5]) == list(np.argsort(-full)[:5])


def test_sparse_seeds_give_the_dense_result() -> None:
    """Seeds as (nodes, weights), the form graph search uses on a large graph, and as a vector agree."""
    graph = weighted_graph(4)
    transition = as_transition(graph)
    seeds = np.zeros(graph.number_of_nodes())
    seeds[[2, 9, 40]] = [0.2, 1.0, 0.3]
    hubs = np.zeros(len(seeds), dtype=bool)
    hubs[11] = True
    dense = personalized_pagerank(transition, seeds, 0.85, 30, 1e-9, prune=1e-3, absorbing=hubs)
    sparse = personalized_pagerank(
        transition, (np.array([40, 2, 9]), np.array([0.3, 0.2, 1.0])), 0.85, 30, 1e-9, prune=1e-3, absorbing=hubs
    )
    np.testing.assert_allclose(sparse, dense, rtol=0, atol=1e-15)
    # the thread's scratch arrays are reused by the next call, of this graph or another size
    assert personalized_pagerank(transition, seeds, 0.85, 30, 1e-9, prune=1e-3, absorbing=hubs) == pytest.approx(dense)
    small = weighted_graph(5)
    np.testing.assert_allclose(
        personalized_pagerank(as_transition(small), np.eye(small.number_of_nodes())[0], 0.5, 500, 1e-13),
        [v for _, v in sorted(nx.pagerank(small, alpha=0.5, personalization={0: 1}, tol=1e-13).items())],
        atol=1e-9,
    )


def test_needs_a_seed() -> None:
    with pytest.raises(ValueError, match="positive sum"):
        personalized_pagerank(sp.csc_matrix((3, 3)), np.zeros(3))
    with pytest.raises(ValueError, match="non-negative"):
        personalized_pagerank(sp.csc_matrix(np.eye(3)), (np.array([0, 1]), np.array([1.0, -0.5])))


def test_max_product_is_the_best_single_edge() -> None:
    rng = np.random.default_rng(7)
    dense = rng.uniform(size=(30, 20)) * (rng.uniform(size=(30, 20)) < 0.2)
    vector = rng.uniform(size=20) * (rng.uniform(size=20) < 0.5)
    expected = (dense * vector[None, :]).max(axis=1)
    np.testing.assert_allclose(max_product(sp.csc_matrix(dense), vector), expected)
    assert not max_product(sp.csc_matrix(dense), np.zeros(20)).any()


def test_sparse_vectors_match_their_dense_counterparts() -> None:
    from ragkit.graph.pagerank import SparseVector, sparse_max_product

    rng = np.random.default_rng(8)
    dense = rng.uniform(size=(300, 200)) * (rng.uniform(size=(300, 200)) < 0.05)
    a = rng.uniform(size=200) * (rng.uniform(size=200) < 0.3)
    b = rng.uniform(size=200) * (rng.uniform(size=200) < 0.3)
    sa, sb = SparseVector.from_dense(a), SparseVector.from_dense(b)
    assert (np.diff(sa.nodes) > 0).all() and (sa.values != 0).all()
    np.testing.assert_array_equal(sa.at(np.arange(200)), a)  # a lookup of every node, present or not
    np.testing.assert_array_equal(sa.at(np.array([-1, 500])), [0.0, 0.0])
    np.testing.assert_array_equal(sa.maximum(sb).dense(200), np.maximum(a, b))
    np.testing.assert_array_equal(sa.scaled(0.5).dense(200), 0.5 * a)
    assert not len(sa.scaled(0.0)) and not len(SparseVector.empty().at(np.arange(3)).nonzero()[0])
    product = sparse_max_product(sp.csc_matrix(dense), sa)
    np.testing.assert_array_equal(product.dense(300), max_product(sp.csc_matrix(dense), a))
    assert (np.diff(product.nodes) > 0).all() and (product.values > 0).all()
    shuffled = SparseVector.of(sa.nodes[::-1], sa.values[::-1])  # any order in, ascending out
    np.testing.assert_array_equal(shuffled.nodes, sa.nodes)
    np.testing.assert_array_equal(shuffled.values, sa.values)


def test_sparse_pagerank_holds_only_the_nodes_the_walk_reached() -> None:
    from ragkit.graph.pagerank import sparse_personalized_pagerank

    graph = nx.disjoint_union(weighted_graph(0), weighted_graph(1))  # nodes 42.. are out of the seeds' reach
    transition = as_transition(graph)
    seeds = (np.array([0, 5]), np.array([1.0, 2.0]))
    scores = sparse_personalized_pagerank(transition, seeds, 0.85, 100, 1e-12)
    assert len(scores) and scores.nodes.max() < 42 and (np.diff(scores.nodes) > 0).all()
    np.testing.assert_array_equal(scores.dense(graph.number_of_nodes()),
                                  personalized_pagerank(transition, seeds, 0.85, 100, 1e-12))


@pytest.mark.parametrize("count", [20, 5000])  # few targets of many nodes are sorted, many are marked in a bitmap
def test_max_by_node_either_way(count: int) -> None:
    from ragkit.graph.pagerank import _max_by_node

    rng = np.random.default_rng(count)
    targets = rng.integers(0, 10_000, count)
    values = rng.uniform(size=count)
    dense = np.zeros(10_000)
    np.maximum.at(dense, targets, values)
    for _ in range(2):  # the second call finds the bitmap cleared
        result = _max_by_node(targets, values, 10_000)
        np.testing.assert_array_equal(result.nodes, np.flatnonzero(dense))
        np.testing.assert_array_equal(result.values, dense[result.nodes])
