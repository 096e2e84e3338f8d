"""Training: stochastic variational inference with KL warm-up, early stopping and checkpoints.

The loop only alternates steps; the maths lives in the models. ``fit`` puts the whole dataset on
the device once, sparse (CSR), and minibatches it there: a step densifies only its own minibatch
and copies nothing from the host. Counts too large for memory stay on disk and are read in
blocks (:class:`ChunkedCounts`).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
import warnings
from dataclasses import asdict

import numpy as np
import pyro
import scipy.sparse as sp
import torch
from pyro.infer import SVI, JitTrace_ELBO, JitTraceEnum_ELBO, Trace_ELBO, TraceEnum_ELBO
from pyro.optim import ClippedAdam
from tqdm.auto import tqdm

from .config import TrainConfig

log = logging.getLogger(__name__)


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` means CUDA when present, else CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available here; use 'cpu' or 'auto'")
    return dev


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy, torch and Pyro at once."""
    pyro.set_rng_seed(seed)


class CountTensors:
    """Counts ``[N, G]`` kept sparse (CSR) on one device, and batches ``s`` (or None); minibatches
    are densified there, one at a time.

    ``x`` may be a dense tensor, a scipy sparse matrix or a torch sparse CSR tensor; ``s`` one-hot
    batches ``[N, S]`` or None. ``rows`` (optional) selects the cells of a larger matrix: a split
    of the counts without copying them (what :meth:`from_adata` does on the CPU). Indexing
    (``data[idx]``, ``batches()``) returns dense ``(x [B, G], s [B, S] or None)`` float32
    tensors; ``data.x`` and ``data.s`` densify every cell (for small data and tests).
    """

    def __init__(self, x, s=None, rows=None):
        if isinstance(x, torch.Tensor) and x.layout == torch.sparse_csr:
            indptr, indices, values, shape = x.crow_indices(), x.col_indices(), x.values(), tuple(x.shape)
        else:
            if isinstance(x, torch.Tensor):
                device, x = x.device, x.detach().cpu().numpy()
            else:
                device = torch.device("cpu")
            X = x if sp.issparse(x) and x.format == "csr" else sp.csr_matrix(x)
            indptr, indices, values = (torch.as_tensor(a, device=device) for a in (X.indptr, X.indices, X.data))
            shape = X.shape
        self.indptr, self.indices = indptr, indices  # [N + 1], [nnz] (int32 or int64)
        self.values = values if values.dtype == torch.float32 else values.float()  # [nnz]
        self.shape = shape
        device = self.values.device
        self.rows = None if rows is None else torch.as_tensor(rows, dtype=torch.long, device=device)
        codes, n_batches = None, 0
        if s is not None:  # kept as codes [N]; one-hot per minibatch
            s = torch.as_tensor(s, device=device)
            codes, n_batches = s.argmax(-1), s.shape[-1]
        self.codes, self.n_batches = codes, n_batches

    @classmethod
    def from_adata(cls, adata, device="cpu", split: str | None = None) -> CountTensors | ChunkedCounts:
        """Counts of a prepared AnnData (:func:`hiermix_pyro.data.prepare`) on ``device``.

        ``split`` keeps the cells with ``obs['split'] == split`` (None: all cells). In memory on
        the CPU, the tensors share ``adata.X``'s CSR arrays (no copy) and the split is a list of
        rows; on another device only the split's rows are copied there. Counts that stay on
        disk (:mod:`hiermix_pyro.data.backed`) give a :class:`ChunkedCounts` instead.
        """
        from .data.backed import is_backed

        mask = np.ones(adata.n_obs, bool) if split is None else (adata.obs["split"] == split).to_numpy()
        codes, n_batches = _batch_codes(adata)
        if is_backed(adata):
            return ChunkedCounts(adata, np.flatnonzero(mask), device=device)
        device = torch.device(device)
        X = adata.X
        X = X if sp.issparse(X) and X.format == "csr" and X.dtype == np.float32 else sp.csr_matrix(X, dtype=np.float32)
        rows = np.flatnonzero(mask)
        if device.type != "cpu":  # copy only the split's rows
            X, codes = X[rows] if len(rows) < X.shape[0] else X, None if codes is None else codes[rows]
            rows = None
        elif len(rows) == X.shape[0]:
            rows = None
        data = cls.__new__(cls)
        data._set(X, device, rows, codes, n_batches)
        return data

    def _set(self, X, device, rows, codes, n_batches) -> None:
        self.indptr, self.indices, self.values = (
            torch.as_tensor(a, device=device) for a in (X.indptr, X.indices, X.data)
        )
        self.shape = X.shape
        self.rows = None if rows is None else torch.as_tensor(rows, dtype=torch.long, device=device)
        self.codes = None if codes is None else torch.as_tensor(codes, dtype=torch.long, device=device)
        self.n_batches = n_batches

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def n_genes(self) -> int:
        return self.shape[1]

    def __len__(self) -> int:
        return self.shape[0] if self.rows is None else len(self.rows)

    @property
    def x(self) -> torch.Tensor:
        """All counts, dense ``[N, G]`` (small data only)."""
        return self[:][0]

    @property
    def s(self) -> torch.Tensor | None:
        """All one-hot batches ``[N, S]``, or None."""
        return self[:][1]

    def __getitem__(self, idx) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Dense ``(x [B, G], s [B, S] or None)`` of the cells ``idx`` (slice, index tensor or array)."""
        if isinstance(idx, slice):
            idx = torch.arange(len(self), device=self.device)[idx]
        idx = torch.as_tensor(idx, dtype=torch.long, device=self.device).reshape(-1)
        rows = idx if self.rows is None else self.rows[idx]
        return self._dense(rows), self._onehot(rows)

    def _dense(self, rows: torch.Tensor) -> torch.Tensor:
        """Densify CSR rows ``[B]`` into ``[B, G]`` on the device: gather the rows' stored values, scatter."""
        B, G = rows.shape[0], self.shape[1]
        start = self.indptr[rows].long()
        counts = self.indptr[rows + 1].long() - start  # stored values per row [B]
        total = int(counts.sum())
        out = self.values.new_zeros(B * G)
        if total:
            row_of = torch.repeat_interleave(torch.arange(B, device=rows.device), counts, output_size=total)
            offsets = torch.cumsum(counts, 0) - counts  # where each row starts in the gathered values
            pos = torch.arange(total, device=rows.device) - offsets[row_of] + start[row_of]
            out.index_add_(0, row_of * G + self.indices[pos].long(), self.values[pos])  # sums duplicates, as toarray
        return out.view(B, G)

    def _onehot(self, rows: torch.Tensor) -> torch.Tensor | None:
        if self.codes is None:
            return None
        return torch.nn.functional.one_hot(self.codes[rows], self.n_batches).float()

    def batches(self, batch_size: int, shuffle: bool = False, drop_last: bool = False):
        """Yield ``(x, s)`` minibatches, indexing and densifying on the device."""
        n = len(self)
        order = torch.randperm(n, device=self.device) if shuffle else torch.arange(n, device=self.device)
        stop = n - n % batch_size if drop_last and n >= batch_size else n
        for i in range(0, stop, batch_size):
            yield self[order[i : i + batch_size]]


def _batch_codes(adata) -> tuple[np.ndarray | None, int]:
    """Batch category codes ``[N]`` and the number of batches (None, 0 without a batch key)."""
    batch_key = adata.uns.get("hiermix", {}).get("batch_key")
    if batch_key is None:
        return None, 0
    batches = adata.obs[batch_key].astype("category")
    return batches.cat.codes.to_numpy().astype(np.int64), batches.cat.categories.size


class ChunkedCounts:
    """Counts that stay on disk, read in row blocks (:class:`hiermix_pyro.data.RowBlocks`), with
    the interface of :class:`CountTensors` (``len``, ``batches``, ``data[idx]``).

    **How shuffled the minibatches are.** With ``shuffle=True`` an epoch permutes the order of
    the blocks (``block_rows`` consecutive cells of the file each, default 8,192), pools
    ``buffer_blocks`` of them (default 8: about 65,000 cells) on the device, permutes the pooled
    cells and cuts minibatches from them; cells left over at the end of a pool join the next
    one. Every cell is visited once per epoch, but a minibatch holds cells from at most
    ``buffer_blocks + 1`` stretches of the file, not from the whole file. For a file sorted by
    cell type that is a few types per pool rather than all of them; shuffle the file's rows once
    (``adata[np.random.permutation(adata.n_obs)].write_h5ad(...)``) when that matters. Without
    ``shuffle`` the cells come in file order. Memory: one pool of CSR blocks at a time.
    """

    def __init__(self, adata, positions, device="cpu", block_rows: int | None = None, buffer_blocks: int = 8):
        from .data.backed import BLOCK_ROWS, RowBlocks

        self.blocks = RowBlocks(adata, positions, block_rows or BLOCK_ROWS)
        codes, self.n_batches = _batch_codes(adata)
        self.codes = None if codes is None else codes[self.blocks.rows]
        self.device = torch.device(device)
        self.buffer_blocks = buffer_blocks
        self.n_genes = adata.n_vars

    def __len__(self) -> int:
        return len(self.blocks.rows)

    def _block(self, i: int) -> tuple[sp.csr_matrix, np.ndarray | None]:
        rows = slice(i * self.blocks.block_rows, (i + 1) * self.blocks.block_rows)
        return self.blocks[i][1], None if self.codes is None else self.codes[rows]

    def _tensors(self, X: sp.csr_matrix, codes) -> CountTensors:
        data = CountTensors.__new__(CountTensors)
        data._set(X, self.device, None, codes, self.n_batches)
        return data

    def __getitem__(self, idx) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Dense ``(x, s)`` of the cells ``idx`` (positions in this split), read from the file."""
        idx = np.arange(len(self))[idx] if isinstance(idx, slice) else np.asarray(idx, dtype=np.int64).reshape(-1)
        order = np.argsort(idx, kind="stable")
        X = self.blocks.read(self.blocks.rows[idx[order]])
        codes = None if self.codes is None else self.codes[idx[order]]
        x, s = self._tensors(X, codes)[:]
        back = torch.as_tensor(np.argsort(order), device=self.device)
        return x[back], None if s is None else s[back]

    @property
    def x(self) -> torch.Tensor:
        return self[:][0]

    @property
    def s(self) -> torch.Tensor | None:
        return self[:][1]

    def batches(self, batch_size: int, shuffle: bool = False, drop_last: bool = False):
        """Yield ``(x, s)`` minibatches (see the class docstring for how shuffled they are)."""
        n_blocks = len(self.blocks)
        order = torch.randperm(n_blocks).tolist() if shuffle else list(range(n_blocks))
        pools = [order[i : i + self.buffer_blocks] for i in range(0, n_blocks, self.buffer_blocks)]
        left_X, left_codes = None, None
        try:
            for p, pool in enumerate(pools):
                parts = [self._block(i) for i in pool]
                if left_X is not None:
                    parts.insert(0, (left_X, left_codes))
                X = sp.vstack([part[0] for part in parts], format="csr")
                codes = None if self.codes is None else np.concatenate([part[1] for part in parts])
                data = self._tensors(X, codes)
                n = len(data)
                last = p == len(pools) - 1
                cells = torch.randperm(n, device=self.device) if shuffle else torch.arange(n, device=self.device)
                usable = n if last else n - n % batch_size  # the rest joins the next pool
                if last and drop_last and n >= batch_size:
                    usable = n - n % batch_size
                for i in range(0, usable, batch_size):
                    yield data[cells[i : i + batch_size]]
                rest = cells[usable:].cpu().numpy()
                rest.sort()  # keep file order within the carried-over cells
                left_X = X[rest] if len(rest) else None
                left_codes = None if codes is None or not len(rest) else codes[rest]
        finally:
            self.blocks.close()


def make_elbo(model, jit: bool = False, num_particles: int = 1):
    """``TraceEnum_ELBO`` for models with discrete sites to enumerate, else ``Trace_ELBO``."""
    if model.enumerated:
        cls = JitTraceEnum_ELBO if jit else TraceEnum_ELBO
    else:
        cls = JitTrace_ELBO if jit else Trace_ELBO
    kwargs = dict(ignore_jit_warnings=True) if jit else {}
    return cls(max_plate_nesting=model.max_plate_nesting, num_particles=num_particles, **kwargs)


class Stepper:
    """SVI steps with everything that changes between steps passed as tensors.

    Pyro's JIT treats keyword arguments as constants (a changing ``beta`` would recompile every
    step) and cannot trace ``None``; so ``n_obs`` is bound once, a missing batch covariate
    travels as a zero-width tensor, and ``beta``, the discrete KL weight ``beta_y`` (with
    ``discrete=True``) and the model's ``schedule()`` values are positional tensors. The same
    path is used with and without JIT.
    """

    def __init__(self, model, optim, n_obs: int, jit: bool = False, discrete: bool = False):
        self.model, self.jit = model, jit
        self.keys = sorted(model.schedule(0.0, 1.0)) + (["beta_y"] if discrete else [])

        def bind(fn):
            def bound(x, s, beta, *extra):
                s = s if s.shape[-1] else None
                return fn(x, s, n_obs=n_obs, beta=beta, **dict(zip(self.keys, extra)))

            return bound

        self.svi = SVI(bind(model.model), bind(model.guide), optim, make_elbo(model, jit=jit))

    def step(self, x, s, beta: float, progress: float = 0.0, beta_y: float | None = None) -> float:
        extra = {k: x.new_tensor(v) for k, v in self.model.schedule(progress, beta).items()}
        if "beta_y" in self.keys:  # eager steps skip the zero (beta - beta_y) KL_y term once the weights agree
            beta_y = beta if beta_y is None else beta_y
            extra["beta_y"] = None if beta_y == beta and not self.jit else x.new_tensor(beta_y)
        s = x.new_zeros(x.shape[0], 0) if s is None else s
        return self.svi.step(x, s, x.new_tensor(beta), *(extra[k] for k in self.keys))


@torch.no_grad()
def evaluate_loss(model, data: CountTensors, batch_size: int = 512, elbo=None) -> float:
    """Negative ELBO per cell (KL weight 1) on ``data``."""
    elbo = elbo or make_elbo(model)
    total = 0.0
    for x, s in data.batches(batch_size):
        total += elbo.loss(model.model, model.guide, x, s, n_obs=x.shape[0], beta=1.0)
    return total / len(data)


def kl_weight(step: int, warmup_steps: int) -> float:
    """beta rises linearly from 1/warmup_steps to 1 (never exactly 0), then stays at 1."""
    return 1.0 if warmup_steps <= 0 else min(1.0, (step + 1) / warmup_steps)


RESUMABLE_CHANGES = (
    "epochs",
    "patience",
    "device",
    "progress",
    "checkpoint_path",
)  # TrainConfig fields a resume may change


def run_configuration(model, config: TrainConfig, data_config=None) -> dict:
    """What a checkpoint records of its run: data, model and train configuration, flattened to
    ``{"data.n_hvg": 500, "model.prior": "normal", "train.lr": 0.001, ...}``."""
    parts = dict(
        data=asdict(data_config) if data_config is not None else {},
        model=asdict(model.config),
        train={k: v for k, v in asdict(config).items() if k not in RESUMABLE_CHANGES},
    )
    return {f"{part}.{k}": v for part, values in parts.items() for k, v in values.items()}


def fit(model, adata, config: TrainConfig = TrainConfig(), *, data_config=None, step_hooks=()) -> dict:
    """Train ``model`` on the ``train`` cells of ``adata``; early stopping on ``validation``.

    Parameters
    ----------
    model: a :class:`~hiermix_pyro.models.base.CountModel`.
    adata: AnnData from :func:`hiermix_pyro.data.prepare` (counts in ``X``, ``obs['split']``).
    config: optimisation settings.
    data_config: the :class:`~hiermix_pyro.config.DataConfig` that made ``adata``, recorded in the
        checkpoint with the model's and the train configuration. Resuming a checkpoint whose
        configuration differs in anything but ``epochs``, ``patience``, ``device``, ``progress``
        (and the checkpoint's own path) is an error that names the differing keys.
    step_hooks: extra callables ``hook(model, x, s, beta)`` run after every SVI step, after
        the model's own ``prior_step`` (its Empirical-Bayes update, if it has one).

    Returns
    -------
    history: dict of per-epoch lists (``epoch``, ``train_loss``, ``val_loss``, ``beta``,
        ``seconds``) and ``best_epoch``, ``epochs_run``, ``train_seconds``, ``device``,
        ``stopped_early``, ``interrupted``. Losses are negative ELBOs per cell. The model ends
        with the weights of the best validation epoch, not the last.
    """
    device = resolve_device(config.device)
    log.info("training on %s", device)
    print(f"hiermix-pyro: training on {device}")
    seed_everything(config.seed)
    model.to(device)
    if config.compile_likelihood:
        model.compile_likelihood()
    train = CountTensors.from_adata(adata, device, "train")
    val = CountTensors.from_adata(adata, device, "validation")
    if len(train) < config.batch_size:
        raise ValueError(
            f"only {len(train)} training cells, fewer than one batch of {config.batch_size}; "
            "lower batch_size or use more cells"
        )
    discrete = config.warmup_epochs_discrete is not None
    if discrete and not getattr(model, "discrete_kl", False):
        raise ValueError(
            f"warmup_epochs_discrete is for models with enumerated cluster variables whose KL "
            f"can be weighted apart (momix, indmom), not {type(model).__name__}"
        )
    pyro.clear_param_store()
    optim = ClippedAdam({"lr": config.lr, "clip_norm": config.clip_norm})
    stepper = Stepper(model, optim, n_obs=len(train), jit=config.jit, discrete=discrete)
    steps_per_epoch = len(train) // config.batch_size if config.jit else math.ceil(len(train) / config.batch_size)
    warmup_steps = config.warmup_epochs * steps_per_epoch
    warmup_steps_y = (config.warmup_epochs_discrete or 0) * steps_per_epoch
    total_steps = config.epochs * steps_per_epoch

    state = dict(
        epoch=0,
        history=dict(epoch=[], train_loss=[], val_loss=[], beta=[], seconds=[]),
        best_loss=math.inf,
        best_epoch=None,
        best_weights=None,
        wait=0,
        done=False,
        stopped_early=False,
    )
    ckpt = config.checkpoint_path
    run_config = run_configuration(model, config, data_config)
    if ckpt and os.path.exists(ckpt):
        state = _load_checkpoint(ckpt, model, optim, config, run_config)
        print(f"hiermix-pyro: resuming from {ckpt} after epoch {state['epoch']}")

    history = state["history"]
    interrupted = False
    bar = tqdm(
        range(state["epoch"], config.epochs),
        initial=state["epoch"],
        total=config.epochs,
        desc="epochs",
        disable=not config.progress or state["done"],
    )
    try:
        for epoch in bar:
            if state["done"]:
                break
            t0 = time.perf_counter()
            model.train()
            total, seen = 0.0, 0
            step = epoch * steps_per_epoch
            for x, s in train.batches(config.batch_size, shuffle=True, drop_last=config.jit):
                beta = kl_weight(step, warmup_steps)
                beta_y = kl_weight(step, warmup_steps_y) if discrete else None
                loss = stepper.step(x, s, beta, progress=step / total_steps, beta_y=beta_y)
                if not math.isfinite(loss):
                    raise FloatingPointError(
                        f"the loss became {loss} at epoch {epoch + 1}, step {step}; "
                        "try a lower lr or a smaller clip_norm"
                    )
                model.prior_step(x, s)
                for hook in step_hooks:
                    hook(model, x, s, beta)
                total += loss * x.shape[0] / len(train)  # loss is scaled to the whole training set
                seen += x.shape[0]
                step += 1
            model.eval()
            train_loss = total / seen
            val_loss = evaluate_loss(model, val) if len(val) else float("nan")
            seconds = time.perf_counter() - t0
            for key, value in zip(history, (epoch + 1, train_loss, val_loss, beta, seconds)):
                history[key].append(value)
            monitored = val_loss if len(val) else train_loss
            if monitored < state["best_loss"]:
                state.update(
                    best_loss=monitored, best_epoch=epoch + 1, wait=0, best_weights=copy.deepcopy(model.state_dict())
                )
            else:
                state["wait"] += 1
            state["epoch"] = epoch + 1
            bar.set_postfix(train=f"{train_loss:.1f}", val=f"{val_loss:.1f}", beta=f"{beta:.2f}")
            stop = bool(config.patience) and state["wait"] >= config.patience and epoch + 1 > config.warmup_epochs
            state["done"] = stop or epoch + 1 == config.epochs
            state["stopped_early"] = stop
            if ckpt:
                _save_checkpoint(ckpt, model, optim, config, state, run_config)
            if stop:
                break
    except KeyboardInterrupt:
        interrupted = True
        warnings.warn(
            f"training interrupted after epoch {state['epoch']}; keeping the best weights so far"
            + (f" (checkpoint: {ckpt})" if ckpt else ""),
            stacklevel=2,
        )
    finally:
        bar.close()
    if state["best_weights"] is not None:
        model.load_state_dict(state["best_weights"])
    model.eval()
    return dict(
        history,
        best_epoch=state["best_epoch"],
        epochs_run=state["epoch"],
        train_seconds=float(sum(history["seconds"])),
        device=str(device),
        stopped_early=state["stopped_early"],
        interrupted=interrupted,
    )


def _save_checkpoint(path, model, optim, config, state, run_config) -> None:
    """Write atomically: an interrupted write never leaves a corrupt checkpoint."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    payload = dict(
        state,
        model=model.state_dict(),
        optim=optim.get_state(),
        train_config=asdict(config),
        run_config=run_config,
        model_class=type(model).__name__,
        rng=pyro.util.get_rng_state(),
    )
    tmp = f"{path}.tmp"
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _load_checkpoint(path, model, optim, config, run_config) -> dict:
    payload = torch.load(path, map_location=next(model.parameters()).device, weights_only=False)
    if payload["model_class"] != type(model).__name__:
        raise ValueError(
            f"checkpoint {path} holds a {payload['model_class']}, not a {type(model).__name__}; "
            "remove it or choose another checkpoint_path"
        )
    saved = payload.get("run_config")
    if saved is None:
        raise ValueError(
            f"checkpoint {path} does not record its configuration (written by an older version); "
            "remove it or choose another checkpoint_path"
        )
    # data.* keys are compared when both runs recorded their DataConfig (fit(..., data_config=...))
    differ = sorted(
        k
        for k in saved.keys() | run_config.keys()
        if (k in saved and k in run_config and saved[k] != run_config[k])
        or (k.startswith(("model.", "train.")) and (k in saved) != (k in run_config))
    )
    if differ:
        details = "; ".join(
            f"{k}: {saved.get(k, '(absent)')!r} in the checkpoint, {run_config.get(k, '(absent)')!r} now"
            for k in differ
        )
        raise ValueError(
            f"checkpoint {path} belongs to a run with another configuration ({details}). "
            "Only epochs, patience, device and progress may change on resume: remove the "
            "checkpoint or choose another output folder / checkpoint_path"
        )
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as err:
        raise ValueError(
            f"checkpoint {path} was written for a model of other sizes; remove it or "
            f"choose another checkpoint_path ({str(err).splitlines()[1].strip()})"
        ) from None
    optim.set_state(payload["optim"])
    pyro.util.set_rng_state(payload["rng"])
    keys = ("epoch", "history", "best_loss", "best_epoch", "best_weights", "wait", "stopped_early")
    state = {k: payload[k] for k in keys}
    # a run that stopped early is finished; one that ran out of epochs goes on if given more
    state["done"] = state["stopped_early"] or state["epoch"] >= config.epochs
    return state
