"""Counts read in row blocks: from an in-memory sparse matrix, or from an ``.h5ad`` file on disk.

Every pass over a count matrix that must scale (validation, highly variable genes, the training
loader of :mod:`hiermix_pyro.train`) reads it as a sequence of row blocks, each a small CSR
matrix. The matrix itself can live in one of two places:

- **in memory**: ``adata.X``, a CSR matrix (blocks are row slices of it, no copy of the whole);
- **on disk** (*backed*): a prepared AnnData whose ``X`` is ``None``, with
  ``uns['hiermix']['backed'] = {"path": ..., "key": "X" | "layers/<name>"}`` naming the file
  and the CSR group holding the counts, ``obs['hiermix_row']`` each cell's row in that file and
  ``var['hiermix_col']`` each gene's column. Only ``obs``, ``var`` and ``uns`` are in memory;
  subsetting the AnnData (cells, genes) subsets these columns, and blocks are read from the
  file (anndata's sparse dataset, one contiguous read per block).

:func:`read_backed` opens a file that way; :func:`~hiermix_pyro.data.load_dataset` does so for
files larger than about half the machine's memory, or when asked (``HIERMIX_BACKED=1``).
"""

from __future__ import annotations

import os
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import scipy.sparse as sp

BLOCK_ROWS = 8192  # rows per block: ~1.6 MB of CSR at 2,000 genes and 10% non-zeros
ROW_KEY, COL_KEY = "hiermix_row", "hiermix_col"  # obs / var columns of backed AnnData
BACKED_ENV = "HIERMIX_BACKED"  # 1: always backed, 0: never, unset: when the counts are large


def is_backed(adata: ad.AnnData) -> bool:
    """Whether ``adata``'s counts stay in a file (see the module docstring)."""
    return adata.X is None and "backed" in adata.uns.get("hiermix", {})


def stored_counts_bytes(path: str | Path, key: str = "X") -> int:
    """Bytes the count matrix at ``key`` takes in memory once read (sparse: data, indices, indptr)."""
    with h5py.File(path, "r") as f:
        node = f[key]
        if isinstance(node, h5py.Dataset):
            return int(node.size * node.dtype.itemsize)
        return sum(int(node[k].size * node[k].dtype.itemsize) for k in ("data", "indices", "indptr"))


def want_backed(path: str | Path, key: str = "X", backed: bool | None = None) -> bool:
    """``backed`` if given, else ``HIERMIX_BACKED`` if set, else whether the counts take more than
    half the machine's physical memory (then reading them whole would most likely fail)."""
    if backed is not None:
        return bool(backed)
    env = os.environ.get(BACKED_ENV, "").lower()
    if env in ("1", "true", "yes"):
        return True
    if env in ("0", "false", "no"):
        return False
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: never switch silently
        return False
    return stored_counts_bytes(path, key) > memory // 2


def read_backed(path: str | Path, layer: str | None = None) -> ad.AnnData:
    """An AnnData of ``path``'s ``obs``, ``var`` and ``uns`` whose counts stay on disk.

    ``layer``: read counts from ``layers/<layer>`` instead of ``X``. The counts must be stored as
    CSR (cells in rows), as ``adata.write_h5ad`` writes a CSR ``X``: row blocks of a CSC matrix
    would read the whole file each. Convert once with
    ``a = anndata.read_h5ad(p); a.X = scipy.sparse.csr_matrix(a.X); a.write_h5ad(p)``.
    """
    path = Path(path).resolve()
    key = "X" if layer is None else f"layers/{layer}"
    with h5py.File(path, "r") as f:
        if key not in f:
            available = list(f["layers"]) if "layers" in f else []
            raise ValueError(f"layer {layer!r} not found in {path}; available: {available}")
        encoding = f[key].attrs.get("encoding-type", "array")
        if encoding != "csr_matrix":
            raise ValueError(
                f"{path}:{key} is stored as {encoding}, not csr_matrix; reading it in row blocks needs "
                "CSR (cells in rows). Rewrite it once: a = anndata.read_h5ad(path); "
                "a.X = scipy.sparse.csr_matrix(a.X); a.write_h5ad(path)"
            )
    full = ad.read_h5ad(path, backed="r")
    try:
        lean = ad.AnnData(obs=full.obs.copy(), var=full.var.copy(), uns=dict(full.uns))
    finally:
        full.file.close()
    lean.obs[ROW_KEY] = np.arange(lean.n_obs, dtype=np.int64)
    lean.var[COL_KEY] = np.arange(lean.n_vars, dtype=np.int64)
    lean.uns["hiermix_backed"] = {"path": str(path), "key": key}  # load_dataset moves it into uns['hiermix']
    return lean


class _FileRows:
    """Contiguous row ranges of a CSR matrix in an ``.h5ad`` file (kept open while in use)."""

    def __init__(self, path: str, key: str):
        self.file = h5py.File(path, "r")
        self.matrix = ad.io.sparse_dataset(self.file[key])

    def read(self, start: int, stop: int) -> sp.csr_matrix:
        return sp.csr_matrix(self.matrix[start:stop])

    def close(self) -> None:
        self.file.close()


class RowBlocks:
    """Row blocks of ``adata``'s counts, restricted to its genes, as CSR float32 matrices.

    Parameters
    ----------
    adata
        In-memory counts (``X`` sparse or dense) or backed (see the module docstring).
    rows
        Positions (in ``adata``) of the cells to read, increasing; None: all.
    block_rows
        Cells per block (the last block may be shorter).

    ``len(blocks)`` is the number of blocks; ``blocks[i]`` reads block i: ``(positions, csr)``,
    the positions (into ``adata``) of its cells and their counts ``[n, G]``. Iterating reads
    them in order.
    """

    def __init__(self, adata: ad.AnnData, rows: np.ndarray | None = None, block_rows: int = BLOCK_ROWS):
        self.rows = np.arange(adata.n_obs) if rows is None else np.asarray(rows, dtype=np.int64)
        if len(self.rows) > 1 and np.any(np.diff(self.rows) <= 0):
            raise ValueError("rows must be increasing positions")
        self.block_rows = int(block_rows)
        self.n_genes = adata.n_vars
        self.backed = is_backed(adata)
        if self.backed:
            info = adata.uns["hiermix"]["backed"]
            self.path, self.key = info["path"], info["key"]
            self.file_rows = adata.obs[ROW_KEY].to_numpy(dtype=np.int64)
            if np.any(np.diff(self.file_rows) <= 0):
                raise ValueError("backed cells must keep the file's row order (obs['hiermix_row'] increasing)")
            cols = adata.var[COL_KEY].to_numpy(dtype=np.int64)
            n_file_cols = _n_cols(self.path, self.key)
            self.cols = None if np.array_equal(cols, np.arange(n_file_cols)) else cols
            self._file = None
        else:
            X = adata.X
            self.X = X if sp.issparse(X) and X.format == "csr" else sp.csr_matrix(X)

    def __len__(self) -> int:
        return -(-len(self.rows) // self.block_rows)

    def __getitem__(self, i: int) -> tuple[np.ndarray, sp.csr_matrix]:
        positions = self.rows[i * self.block_rows : (i + 1) * self.block_rows]
        return positions, self.read(positions)

    def __iter__(self):
        try:
            for i in range(len(self)):
                yield self[i]
        finally:
            self.close()

    def read(self, positions: np.ndarray) -> sp.csr_matrix:
        """Counts of the cells at ``positions`` (increasing), ``[n, G]`` CSR float32.

        In memory, the rows themselves. Backed, contiguous stretches of the file of at most
        ``4 * block_rows`` rows, each read at once and cut to the cells wanted: one read per
        stretch, and never more than one stretch in memory beside the result, however sparse
        the positions (a sample of 10,000 cells out of a million reads the file in small pieces).
        """
        positions = np.asarray(positions, dtype=np.int64)
        if not len(positions):
            return sp.csr_matrix((0, self.n_genes), dtype=np.float32)
        if not self.backed:
            first, last = int(positions[0]), int(positions[-1]) + 1
            return _float32(self.X[first:last] if last - first == len(positions) else self.X[positions])
        if self._file is None:
            self._file = _FileRows(self.path, self.key)
        file_rows = self.file_rows[positions]
        span = 4 * self.block_rows
        pieces, i = [], 0
        while i < len(file_rows):
            j = int(np.searchsorted(file_rows, file_rows[i] + span, side="left"))  # rows within one stretch
            first, last = int(file_rows[i]), int(file_rows[j - 1]) + 1
            piece = self._file.read(first, last)
            if last - first != j - i:
                piece = piece[file_rows[i:j] - first]
            if self.cols is not None:
                piece = piece[:, self.cols]
            pieces.append(_float32(piece))
            i = j
        return pieces[0] if len(pieces) == 1 else sp.vstack(pieces, format="csr")

    def close(self) -> None:
        if self.backed and self._file is not None:
            self._file.close()
            self._file = None


def _float32(block) -> sp.csr_matrix:
    block = sp.csr_matrix(block)
    return block if block.dtype == np.float32 else block.astype(np.float32)


def _n_cols(path: str, key: str) -> int:
    with h5py.File(path, "r") as f:
        return int(f[key].attrs["shape"][1])


def row_sums(adata: ad.AnnData, block_rows: int = BLOCK_ROWS) -> np.ndarray:
    """Total counts of every cell ``[N]``, in row blocks."""
    if not is_backed(adata):
        return np.asarray(adata.X.sum(axis=1)).ravel()
    return np.concatenate([np.asarray(block.sum(axis=1)).ravel() for _, block in RowBlocks(adata, None, block_rows)])
