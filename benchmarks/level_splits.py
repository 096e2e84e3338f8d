"""Which group a rule without labels splits at each level, given the true level above.

    .venv/bin/python benchmarks/level_splits.py hierarchy pbmc_sorted9 --pca \
        --csv benchmarks/results/level_splits_hierarchy_pbmc_sorted9_pca.csv
    .venv/bin/python benchmarks/level_splits.py hierarchy pbmc_sorted9 momix_init_leiden50_usage0 \
        --csv benchmarks/results/level_splits_hierarchy_pbmc_sorted9.csv

The question it answers: when a level has more clusters than the level above, which groups does
a rule without labels split, and how close to the true level does that come? For each level l,
start from the *true* groups of level l - 1 (one group for the first level) and split, one split
at a time, the group whose best split in two gains the most, until the level has as many groups as
it has classes (``greedy_ari``: the ARI against the true level l). Two rules (``rule``):

- ``variance``: the split is two-means, the gain the sum of squares it removes (the k-means
  objective, and Ward's merge cost read top-down: bisecting k-means);
- ``likelihood``: the split is a two-component diagonal Gaussian mixture, the gain the
  log-likelihood it adds over one diagonal Gaussian (the components' family of ``momix``; the
  rule of ``init="vae_divisive"``).

``forced_ari`` splits every true parent into as many groups as it has true children by the rule's
own clustering: the right groups split, each along the data's own axes. Both start from the true
level above, so they are a reference for one level at a time that uses the labels, not a method.

The embedding is a run's latent (``obsm['X_latent']`` of every seed's
``runs/<study>/<dataset>/<method>/seed<k>/adata.h5ad``) or, with ``--pca``, the peers' PCA
(``benchmarks/peers.py``: log-normalised counts, the study's ``n_pcs``) of the study's cells.
One row per (rule, seed, level, true parent group): its size, its true children, the gain of its
best split into as many groups as it has true children (two at least; ``best_gain``) and of its
split into its true children (``labelled_gain``; with the mixture weights' n_c log(n_c / n) for
the likelihood), how many splits the greedy rule made inside it (``greedy_splits``), and the
level's ``greedy_ari`` and ``forced_ari``. Gains: variance, shares of the embedding's total sum of
squares; likelihood, nats.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


RULES = ("variance", "likelihood")  # k-means and Ward's sum of squares; a diagonal Gaussian mixture's likelihood


def within_ss(x: np.ndarray) -> float:
    """Sum of squared distances of the rows of ``x`` ``[n, D]`` to their mean."""
    return float(((x - x.mean(0)) ** 2).sum()) if len(x) else 0.0


def fit_score(x: np.ndarray, rule: str) -> float:
    """How well one group fits ``x``: minus its sum of squares (variance) or its diagonal Gaussian
    log-likelihood (likelihood); a split's gain is the children's total minus the parent's."""
    from hiermix_pyro.initialise import gaussian_loglik

    return -within_ss(x) if rule == "variance" else gaussian_loglik(x)


def best_split(x: np.ndarray, k: int, rule: str, seed: int) -> tuple[np.ndarray, float]:
    """``x`` split into ``k`` groups by the rule's own clustering: k-means (variance) or a
    k-component diagonal Gaussian mixture (likelihood, ``vae_divisive``'s), 10 starts each. The
    labels ``[n]`` and the gain (variance: the sum of squares removed; likelihood: the
    log-likelihood gained, nats); -inf for too few rows."""
    from sklearn.cluster import KMeans

    from hiermix_pyro.initialise import gaussian_split

    if rule == "likelihood":
        return gaussian_split(x, seed, k)
    if len(x) < 2 * k:
        return np.zeros(len(x), dtype=np.int64), -np.inf
    fit = KMeans(k, n_init=10, random_state=seed).fit(x)
    return fit.labels_.astype(np.int64), within_ss(x) - float(fit.inertia_)


def greedy_splits(z: np.ndarray, parents: np.ndarray, k: int, rule: str, seed: int) -> np.ndarray:
    """The groups of ``parents`` ``[N]`` split in two, one at a time, always the group whose split
    gains the most by ``rule``, until there are ``k`` groups (``vae_divisive``'s top-down rule,
    :func:`hiermix_pyro.initialise.divisive_splits`): labels ``[N]``."""
    from hiermix_pyro.initialise import divisive_splits

    return divisive_splits(z, [k], seed, split=lambda x, s: best_split(x, 2, rule, s), start=parents)[0]


def level_rows(z: np.ndarray, coarse: np.ndarray, fine: np.ndarray, rule: str, seed: int) -> list[dict]:
    """The rows of one level and rule: ``coarse`` and ``fine`` are the true labels (strings) ``[N]``
    of the level above and of the level."""
    from sklearn.metrics import adjusted_rand_score

    greedy = greedy_splits(z, np.unique(coarse, return_inverse=True)[1], len(set(fine)), rule, seed)
    forced = np.empty(len(z), dtype=object)
    rows = []
    for parent in sorted(set(coarse)):
        cells = coarse == parent
        children = sorted(set(fine[cells]))
        x = z[cells]
        sub, gain = best_split(x, max(2, len(children)), rule, seed)  # as many groups as true children, 2 at least
        labelled = sum(fit_score(x[fine[cells] == c], rule) for c in children) - fit_score(x, rule)
        if rule == "likelihood":  # a mixture's weights: sum_c n_c log(n_c / n), as the fitted mixture's score has them
            labelled += sum(n * np.log(n / len(x)) for n in ((fine[cells] == c).sum() for c in children))
        forced[cells] = [f"{parent}/{j}" for j in sub] if len(children) > 1 else parent
        rows.append(
            dict(
                group=parent,
                n_cells=int(cells.sum()),
                true_children=" | ".join(children),
                best_gain=gain,
                labelled_gain=labelled if len(children) > 1 else np.nan,
                greedy_splits=len(set(greedy[cells])) - 1,
            )
        )
    scale = within_ss(z) if rule == "variance" else 1.0  # variance: gains as shares of the total sum of squares
    greedy_ari = adjusted_rand_score(fine, greedy)
    forced_ari = adjusted_rand_score(fine, forced.astype(str))
    return [
        dict(row, best_gain=row["best_gain"] / scale, labelled_gain=row["labelled_gain"] / scale)
        | dict(greedy_ari=greedy_ari, forced_ari=forced_ari)
        for row in rows
    ]


def embedding_rows(z: np.ndarray, truth: pd.DataFrame, levels: list[str], seed: int) -> list[dict]:
    """Every rule's and level's rows for one embedding ``z`` ``[N, D]`` and the true levels ``truth``."""
    rows = []
    for rule in RULES:
        coarse = np.full(len(z), "all", dtype=object)
        for level in levels:
            fine = truth[level].astype(str).to_numpy()
            rows += [dict(rule=rule, level=level, **row) for row in level_rows(z, coarse, fine, rule, seed)]
            coarse = fine
    return rows


def run_embeddings(args) -> list[tuple[int, np.ndarray, pd.DataFrame]]:
    """(seed, latent, true levels) of every seed's run under the runs folder."""
    import anndata as ad

    base = Path(args.runs) / args.study / args.dataset / args.method
    paths = sorted(base.glob("seed*/adata.h5ad"), key=lambda p: int(p.parent.name[4:]))
    if not paths:
        sys.exit(f"no runs with an adata.h5ad under {base}")
    out = []
    for path in paths:
        adata = ad.read_h5ad(path)
        out.append((int(path.parent.name[4:]), np.asarray(adata.obsm["X_latent"]), adata.obs))
    return out


def pca_embeddings(args) -> list[tuple[int, np.ndarray, pd.DataFrame]]:
    """(seed, PCA, true levels) for ``args.seeds``: the peers' PCA of the study's cells."""
    from peers import pca_embedding

    from hiermix_pyro.study import load_study
    from hiermix_pyro.workflow import load

    study = load_study(args.study)
    n_pcs = study.peer_arguments(args.dataset, 0).get("peer", {}).get("n_pcs", 50)
    out = []
    for seed in args.seeds:
        adata = load(study.data_config(args.dataset, seed))
        z, _ = pca_embedding(adata, n_pcs, seed)
        out.append((seed, np.asarray(z), adata.obs))
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study")
    parser.add_argument("dataset")
    parser.add_argument("method", nargs="?", help="the runs' method (its latents); omit with --pca")
    parser.add_argument("--pca", action="store_true", help="the peers' PCA of the study's cells instead of runs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="with --pca: the seeds (default 0)")
    parser.add_argument("--levels", nargs="+", default=["L1", "L2", "L3", "L4"], help="true levels, coarse to fine")
    parser.add_argument("--runs", default="runs", help="the workflow's runs folder (default runs)")
    parser.add_argument("--csv", help="write the table here (default: print it)")
    args = parser.parse_args(argv)
    if args.pca == bool(args.method):
        parser.error("give a method (its runs' latents) or --pca, not both")
    embeddings = pca_embeddings(args) if args.pca else run_embeddings(args)
    source = "pca" if args.pca else args.method
    rows = []
    for seed, z, obs in embeddings:
        missing = [level for level in args.levels if level not in obs]
        if missing:
            sys.exit(f"seed {seed}: no true level(s) {missing} in the cells' obs")
        for row in embedding_rows(z, obs, args.levels, seed):
            rows.append(dict(study=args.study, dataset=args.dataset, embedding=source, seed=seed, **row))
    table = pd.DataFrame(rows)
    summary = table.groupby(["rule", "level", "group"], sort=False)[
        ["best_gain", "labelled_gain", "greedy_splits", "greedy_ari", "forced_ari"]
    ].mean()
    print(summary.round(3).to_string())
    if args.csv:
        table.to_csv(args.csv, index=False)
        print(f"wrote {args.csv}")


if __name__ == "__main__":
    main()
