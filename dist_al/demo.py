"""The embedded demo: one active-learning round on a synthetic pool, every strategy side by side.

A softmax-regression head trained on a small random seed set gives p and h;
each strategy picks a batch; the head is retrained on seed + batch and scored
on held-out rows. No cluster, no files, no cloud account.
"""

from __future__ import annotations

import time

import torch

from .core import STRATEGIES, select
from .synthetic import gaussian_mixture

N_CLASSES, DIM, SEED_LABELS, TEST_ROWS = 10, 32, 30, 5_000


def _fit_head(x: torch.Tensor, y: torch.Tensor, steps: int = 300) -> torch.nn.Linear:
    torch.manual_seed(0)
    head = torch.nn.Linear(x.shape[1], N_CLASSES)
    opt = torch.optim.Adam(head.parameters(), lr=0.05, weight_decay=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(head(x), y).backward()
        opt.step()
    return head


def run_demo(rows: int = 20_000, budget: int = 100, seed: int = 0) -> int:
    if rows < SEED_LABELS + budget + 1:
        raise ValueError(f"--rows must be larger than {SEED_LABELS} seed labels + the budget ({budget})")
    feats, labels = gaussian_mixture(rows + TEST_ROWS, N_CLASSES, DIM, seed=seed)
    pool, pool_y, test, test_y = feats[:rows], labels[:rows], feats[rows:], labels[rows:]
    seed_rows = torch.randperm(rows, generator=torch.Generator().manual_seed(seed))[:SEED_LABELS]
    head = _fit_head(pool[seed_rows], pool_y[seed_rows])
    with torch.no_grad():
        probs = torch.softmax(head(pool), 1)
        start_acc = float((head(test).argmax(1) == test_y).float().mean())
    print(f"pool: {rows} rows, {N_CLASSES} classes, {DIM} features; {SEED_LABELS} seed labels "
          f"(test accuracy {start_acc:.3f}); budget {budget}\n")
    print(f"| {'strategy':<15}| select time (s) | classes in batch | test accuracy after labeling |")
    print(f"|{'-' * 16}|----------------:|-----------------:|-----------------------------:|")
    for name in STRATEGIES:
        t0 = time.perf_counter()
        picks = torch.from_numpy(select(name, probs, pool, budget, labeled=seed_rows, seed=seed))
        elapsed = time.perf_counter() - t0
        rows_l = torch.cat([seed_rows, picks])
        acc = float((_fit_head(pool[rows_l], pool_y[rows_l])(test).argmax(1) == test_y).float().mean())
        covered = len(torch.unique(pool_y[picks]))
        print(f"| {name:<15}| {elapsed:15.3f} | {covered:16d} | {acc:28.3f} |")
    return 0
