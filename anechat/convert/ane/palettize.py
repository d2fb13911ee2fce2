"""LUT palettization in numpy: exact weighted 1-D k-means per group of output channels.

A group's weights are sorted once; the optimal k clusters of sorted 1-D points are contiguous runs, so the
k-means optimum is a dynamic programme over split points (Grønlund et al., "Fast exact k-means, k-medians and
Bregman divergence clustering in 1D"). The run costs obey the quadrangle inequality, so the best split point
of each DP row is monotone in its end point: divide and conquer finds a whole row in O(n log n) instead of
O(n²), and every group of a matrix is solved in the same numpy passes.

Each weight's squared error is weighted by the second moment of the activation it multiplies (the input
channel's mean x² on a calibration text): the error a weight adds to its output is w_err · x, so that is
the expected squared output error, the diagonal of the layer's Hessian as SqueezeLLM and AWQ use it.
"""

from __future__ import annotations

import numpy as np

from anechat.arch.mil import Palettized

BITS = (4, 6, 8)
# Points a group's values are merged into before the exact DP (its cost grows as k · points · log points).
# With 8 bits the 256 merged runs are the palette themselves: the DP would have nothing left to choose.
POINTS = {4: 64, 6: 128, 8: 256}


def _prefix(a: np.ndarray) -> np.ndarray:
    out = np.zeros((a.shape[0], a.shape[1] + 1))
    np.cumsum(a, axis=1, out=out[:, 1:])
    return out


class _Runs:
    """Weighted sums of every run of sorted points, from prefix sums: cost(m, i) of points [m, i)."""

    def __init__(self, x: np.ndarray, w: np.ndarray) -> None:
        self.n = x.shape[1] + 1  # prefix rows are 0..n_points
        self.p0 = _prefix(w).ravel()
        self.p1 = _prefix(w * x).ravel()
        self.p2 = _prefix(w * x * x).ravel()

    def cost(self, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        """start/end: flat indices g·n + m, g·n + i."""
        s0 = self.p0[end] - self.p0[start]
        s1 = self.p1[end] - self.p1[start]
        s2 = self.p2[end] - self.p2[start]
        with np.errstate(divide="ignore", invalid="ignore"):
            c = s2 - s1 * s1 / s0
        return np.where(s0 > 0, c, 0.0)


def _dp_row(prev: np.ndarray, runs: _Runs) -> tuple[np.ndarray, np.ndarray]:
    """cur[g, i] = min over m ≤ i of prev[g, m] + cost(m, i), and the first best m, for every group at once.
    Divide and conquer on i: the best m of a midpoint bounds the search of the two halves around it."""
    groups, n = prev.shape
    cur = np.empty_like(prev)
    arg = np.empty(prev.shape, np.int32)
    prev_flat = prev.ravel()
    base = np.arange(groups, dtype=np.int32) * n
    lo, hi = np.array([0], np.int32), np.array([n - 1], np.int32)
    opt_lo, opt_hi = np.zeros((groups, 1), np.int32), np.full((groups, 1), n - 1, np.int32)
    while lo.size:
        mid = (lo + hi) // 2
        first = opt_lo
        last = np.minimum(opt_hi, mid[None, :])
        lengths = (last - first + 1).ravel()
        starts = np.zeros(lengths.size, np.int32)
        np.cumsum(lengths[:-1], out=starts[1:])
        segment = np.repeat(np.arange(lengths.size, dtype=np.int32), lengths)
        ramp = np.arange(segment.size, dtype=np.int32)
        # Each candidate: its group's row g, its split point m and its midpoint i, as flat offsets.
        offset = np.repeat(np.repeat(base, mid.size) + (first.ravel() - starts), lengths)
        start = offset + ramp
        end = np.repeat(np.repeat(base, mid.size) + np.tile(mid, groups), lengths)
        value = prev_flat[start] + runs.cost(start, end)
        best = np.minimum.reduceat(value, starts)
        position = np.where(value <= np.repeat(best, lengths), ramp, segment.size)
        best_m = (start[np.minimum.reduceat(position, starts)] - np.repeat(base, mid.size)).reshape(groups, mid.size)
        cur[:, mid] = best.reshape(groups, mid.size)
        arg[:, mid] = best_m
        left, right = lo <= mid - 1, mid + 1 <= hi
        lo, hi = np.concatenate([lo[left], mid[right] + 1]), np.concatenate([mid[left] - 1, hi[right]])
        opt_lo = np.concatenate([opt_lo[:, left], best_m[:, right]], axis=1)
        opt_hi = np.concatenate([best_m[:, left], opt_hi[:, right]], axis=1)
    return cur, arg


def kmeans_1d(x: np.ndarray, w: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact weighted k-means of each row of x (groups, n), sorted ascending, weights w ≥ 0.

    Returns (centroids (groups, k) ascending, cost (groups,)): the minimum of Σ w·(x − centroid)² over all
    assignments. Empty clusters (fewer distinct points than k) repeat a neighbour's centroid."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    groups, npoints = x.shape
    if npoints <= k:  # every point its own cluster
        return np.concatenate([x, np.repeat(x[:, -1:], k - npoints, axis=1)], axis=1), np.zeros(groups)
    runs = _Runs(x, w)
    n = npoints + 1
    rows = np.arange(groups) * n
    ends = rows[:, None] + np.arange(n)
    table = runs.cost(np.broadcast_to(rows[:, None], ends.shape).ravel(), ends.ravel()).reshape(groups, n)
    args = []
    for _ in range(k - 1):
        table, arg = _dp_row(table, runs)
        args.append(arg)
    cost = table[:, -1]
    # Walk the split points back from the last point; each run's weighted mean is its centroid.
    bounds = np.empty((groups, k + 1), np.int64)
    bounds[:, k] = npoints
    bounds[:, 0] = 0
    g = np.arange(groups)
    for j in range(k - 1, 0, -1):
        bounds[:, j] = args[j - 1][g, bounds[:, j + 1]]
    s0 = runs.p0[rows[:, None] + bounds[:, 1:]] - runs.p0[rows[:, None] + bounds[:, :-1]]
    s1 = runs.p1[rows[:, None] + bounds[:, 1:]] - runs.p1[rows[:, None] + bounds[:, :-1]]
    with np.errstate(divide="ignore", invalid="ignore"):
        centroids = s1 / s0
    # A run without weight has no mean: give it the nearest point so the palette stays sorted and finite.
    empty = ~(s0 > 0)
    if empty.any():
        at = np.minimum(bounds[:, :-1], npoints - 1)
        centroids[empty] = x[np.broadcast_to(g[:, None], at.shape)[empty], at[empty]]
    return np.maximum.accumulate(centroids, axis=1), cost


def _histogram(x: np.ndarray, w: np.ndarray, points: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of x (groups, n) sorted ascending with weights w → at most `points` weighted points per row.

    Rows with no more distinct values than `points` come back exactly (equal values merged, which changes
    no clustering cost). Longer rows are merged into runs of neighbours: a clustering that never splits a
    run costs its points' cost plus the runs' inner scatter, a constant, so the DP stays exact among those.
    Half the run boundaries are weight quantiles (resolution where the mass is), half equal steps in value
    (outliers keep their own runs: they carry the largest errors)."""
    groups = x.shape[0]
    new = np.ones(x.shape, bool)
    new[:, 1:] = x[:, 1:] != x[:, :-1]
    distinct = np.cumsum(new, axis=1) - 1
    if distinct[:, -1].max() + 1 > points:
        cdf = (np.cumsum(w, axis=1) - w) / np.maximum(w.sum(axis=1, keepdims=True), 1e-30)
        span = np.maximum(x[:, -1:] - x[:, :1], 1e-30)
        half = points // 2
        by_value = np.minimum((x - x[:, :1]) / span * half, half - 1).astype(np.int64)
        by_mass = np.minimum(cdf * (points - half), points - half - 1).astype(np.int64)
        distinct = np.where(distinct > 0, by_value + by_mass, 0)
        # both parts are non-decreasing along the sorted row, so equal values land in one run
    width = int(distinct.max()) + 1
    flat = (np.arange(groups)[:, None] * width + distinct).ravel()
    s0 = np.bincount(flat, w.ravel(), groups * width).reshape(groups, width)
    s1 = np.bincount(flat, (w * x).ravel(), groups * width).reshape(groups, width)
    seen = np.bincount(flat, None, groups * width).reshape(groups, width) > 0
    first = np.bincount(flat, x.ravel(), groups * width).reshape(groups, width) / np.maximum(
        np.bincount(flat, None, groups * width).reshape(groups, width), 1
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        values = np.where(s0 > 0, s1 / s0, first)
    # Runs that received no point sit at the previous run's value with no weight: sorted, and free.
    last_seen = np.maximum.accumulate(np.where(seen, np.arange(width), 0), axis=1)
    values = np.take_along_axis(values, last_seen, axis=1)
    return values, np.where(seen, s0, 0.0)


def _sort_key(half: np.ndarray) -> np.ndarray:
    """fp16 values → uint16 keys in the same order: numpy sorts 16-bit integers by radix, ~4× faster than
    floats (sign bit set: all bits flipped; clear: sign bit set)."""
    bits = half.view(np.uint16)
    return np.where(bits & 0x8000, ~bits, bits | 0x8000)


def _assign(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid (sorted ascending) for every x (groups, n)."""
    mids = (centroids[:, 1:] + centroids[:, :-1]) / 2
    idx = np.zeros(x.shape, np.uint8)
    for j in range(mids.shape[1]):
        idx += x > mids[:, j : j + 1]
    return idx


def palettize_matrix(
    weight: np.ndarray, bits: int, group_size: int = 1, input_weights: np.ndarray | None = None, points: int | None = None
) -> Palettized:
    """weight (out, in) → a LUT of 2**bits fp16 values per `group_size` output channels.

    With `input_weights` (per input channel c, E[x_c²] of the activations it multiplies on a calibration
    text) each group's palette minimises Σ E[x_c²] · (w − LUT[index])²; without, plain squared error. Every
    weight takes its nearest palette value, which is what that objective wants."""
    if bits not in BITS:
        raise ValueError(f"LUT bits must be one of {BITS}, got {bits}")
    out, cols = weight.shape
    if group_size < 1 or out % group_size:
        raise ValueError(f"LUT group size {group_size} does not divide {out} output channels")
    k = 2**bits
    groups = out // group_size
    # fp16 first: the palette may only hold values the file can store, and equal fp16 values merge.
    half = weight.astype(np.float16).reshape(groups, group_size * cols)
    x = half.astype(np.float64)
    cw = np.ones(cols) if input_weights is None else np.asarray(input_weights, np.float64)
    w = np.broadcast_to(np.tile(cw, group_size), x.shape)
    order = np.argsort(_sort_key(half), axis=1, kind="stable")
    xs = np.take_along_axis(x, order, axis=1)
    ws = np.take_along_axis(w, order, axis=1)
    hx, hw = _histogram(xs, ws, max(points or POINTS[bits], k))
    centroids, _ = kmeans_1d(hx, hw, k)
    lut = centroids.astype(np.float16)
    indices = _assign(x, lut.astype(np.float64)).reshape(out, cols)
    return Palettized(indices, lut.reshape(groups, 1, k, 1), bits)
