import pytest
import torch

from hiermix_pyro.data import prepare, simulate_hierarchy

torch.set_num_threads(1)  # tiny models: threads only add overhead on a shared 2-core machine


@pytest.fixture(scope="session")
def sim_adata():
    """A small 2-level simulated tree (2 x 2 leaves), 80 genes, prepared with a split."""
    adata = simulate_hierarchy(branching=(2, 2), cells_per_leaf=60, n_genes=80, seed=0)
    return prepare(adata, n_hvg=None, seed=0)


@pytest.fixture(scope="session")
def sim_batch_adata():
    """The same with two batches, for the batch-covariate paths."""
    adata = simulate_hierarchy(branching=(2, 2), cells_per_leaf=30, n_genes=60, n_batches=2, seed=1)
    return prepare(adata, n_hvg=None, seed=0)
