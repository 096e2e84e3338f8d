"""Prior building blocks shared by the mixture models.

``diag_normal_log_prob_matrix`` evaluates log N(z_b | m_p, s_p^2) for every (cell b, component p)
pair with three matrix products instead of an elementwise ``[B, P, D]`` tensor: about 10x
cheaper forward and backward at the sizes used here (see ``benchmarks/``). :class:`DiagComponents`
is the same density with each step's component constants computed once and the whole matrix in
one product, which :class:`ComponentDensity` (the hierarchical mixtures' ``z`` site) uses.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution, constraints
from pyro.ops.indexing import Vindex


def diag_normal_log_prob_matrix(z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``log N(z | loc_p, diag(scale_p^2))`` for all components p.

    z: ``[..., B, D]``; loc, scale: ``[P, D]``  ->  ``[..., B, P]``.

    Uses ``sum_d (z_d - m_pd)^2 / s_pd^2 = z^2 . (1/s^2)^T - 2 z . (m/s^2)^T + sum_d m^2/s^2``.
    """
    prec = scale.pow(-2)  # [P, D]
    quad = z.pow(2) @ prec.T - 2.0 * z @ (loc * prec).T + (loc.pow(2) * prec).sum(-1)  # [..., B, P]
    log_norm = -scale.log().sum(-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)  # [P]
    return log_norm - 0.5 * quad


def mixture_log_prob(
    z: torch.Tensor, log_weights: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """log sum_p w_p N(z | loc_p, scale_p^2): ``[..., B, D] -> [..., B]``."""
    return torch.logsumexp(log_weights + diag_normal_log_prob_matrix(z, loc, scale), dim=-1)


# ---- full-covariance Gaussians, written with the Cholesky factor of the precision ----
# (used by the Bayesian GMM and VampPrior-mixture priors: Lambda_k = L_k L_k^T)


def full_normal_log_prob_matrix(z: torch.Tensor, loc: torch.Tensor, prec_tril: torch.Tensor) -> torch.Tensor:
    """``log N(z | loc_k, (L_k L_k^T)^{-1})`` for all components k.

    z: ``[..., B, D]``; loc: ``[K, D]``; prec_tril (lower-triangular L_k): ``[K, D, D]``  ->  ``[..., B, K]``.

    The Mahalanobis term is ``|| L_k^T (z - m_k) ||^2``: one ``[B, D] x [D, K*D]`` product for all k
    (``z L_k``, row-vector form), minus the precomputed ``m_k L_k``.
    """
    K, D = loc.shape
    zl = (z @ prec_tril.permute(1, 0, 2).reshape(D, K * D)).unflatten(-1, (K, D))  # [..., B, K, D]
    ml = (loc.unsqueeze(-2) @ prec_tril).squeeze(-2)  # [K, D]
    quad = (zl - ml).pow(2).sum(-1)  # [..., B, K]
    log_det = prec_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # [K]: 0.5 log |Lambda_k|
    return log_det - 0.5 * D * math.log(2 * math.pi) - 0.5 * quad


def expected_normal_log_prob_matrix(
    z_loc: torch.Tensor,
    z_var: torch.Tensor | None,
    loc: torch.Tensor,
    loc_var: torch.Tensor | None,
    prec_tril: torch.Tensor,
) -> torch.Tensor:
    """``E[log N(z | mu_k, Lambda_k^{-1})]`` with z ~ N(z_loc, diag z_var), mu_k ~ N(loc_k, diag loc_var_k).

    Analytic: ``log N(z_loc | loc_k, Lambda_k^{-1}) - 0.5 tr(Lambda_k diag(z_var + loc_var_k))``; the
    trace only needs diag(Lambda_k), so it is one more ``[B, D] x [D, K]`` product.
    z_loc, z_var: ``[..., B, D]`` (z_var None: z is a point); loc, loc_var: ``[K, D]`` (None: a point).
    """
    out = full_normal_log_prob_matrix(z_loc, loc, prec_tril)  # [..., B, K]
    prec_diag = prec_tril.pow(2).sum(-1)  # [K, D]: (L L^T)_dd = sum_j L_dj^2
    if z_var is not None:
        out = out - 0.5 * z_var @ prec_diag.T
    if loc_var is not None:
        out = out - 0.5 * (loc_var * prec_diag).sum(-1)
    return out


def precision_tril(cov: torch.Tensor) -> torch.Tensor:
    """Cholesky factor L of the precision ``cov^{-1} = L L^T``: ``[K, D, D] -> [K, D, D]``."""
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(cov)))


class GaussianMixture(dist.TorchDistribution):
    """``p(z) = sum_k w_k N(z | loc_k, Lambda_k^{-1})`` as one distribution over z, batch ``[B]``.

    A continuous density: no discrete site to enumerate, and ``log_prob`` is the matmul form
    (:func:`full_normal_log_prob_matrix`, or :func:`diag_normal_log_prob_matrix` with ``scale``).
    Give either ``prec_tril`` (full precision Cholesky, ``[K, D, D]``) or ``scale`` (diagonal, ``[K, D]``).
    """

    arg_constraints = {}
    support = dist.constraints.real_vector
    has_rsample = False

    def __init__(self, logits, loc, *, prec_tril=None, scale=None, batch_shape=torch.Size(), validate_args=None):
        if (prec_tril is None) == (scale is None):
            raise ValueError("give exactly one of prec_tril (full covariance) or scale (diagonal)")
        self.log_weights = torch.log_softmax(logits, -1)  # [K]
        self.loc, self.prec_tril, self.scale = loc, prec_tril, scale
        super().__init__(torch.Size(batch_shape), loc.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        return GaussianMixture(
            self.log_weights, self.loc, prec_tril=self.prec_tril, scale=self.scale, batch_shape=batch_shape
        )

    def component_log_prob(self, z):  # [..., B, D] -> [..., B, K]
        if self.scale is not None:
            return diag_normal_log_prob_matrix(z, self.loc, self.scale)
        return full_normal_log_prob_matrix(z, self.loc, self.prec_tril)

    def log_prob(self, z):  # [..., B, D] -> [..., B]
        return torch.logsumexp(self.log_weights + self.component_log_prob(z), -1)

    def sample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)[:-1]
        k = torch.distributions.Categorical(logits=self.log_weights).sample(shape)  # [S?, B]
        eps = torch.randn(shape + self.event_shape, dtype=self.loc.dtype, device=self.loc.device)
        if self.scale is not None:
            return self.loc[k] + self.scale[k] * eps
        # z = m + L^{-T} eps has covariance (L L^T)^{-1}
        shift = torch.linalg.solve_triangular(self.prec_tril[k].transpose(-1, -2), eps.unsqueeze(-1), upper=True)
        return self.loc[k] + shift.squeeze(-1)


# ---- hierarchical mixtures (momix, indmom): Student-t components, component densities ----


def diag_studentt_log_prob_matrix(
    z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor, df: torch.Tensor
) -> torch.Tensor:
    """Multivariate Student-t ``log t_df(z | loc_p, diag(scale_p^2))`` for all components p.

    z: ``[..., B, D]``; loc, scale: ``[P, D]``; df: ``[P]``  ->  ``[..., B, P]``.

    One degrees-of-freedom per component and a diagonal scale: the density depends on z only
    through the Mahalanobis distance, so it costs the same three matrix products as
    :func:`diag_normal_log_prob_matrix` (a product of D univariate t's would need the
    elementwise ``[B, P, D]`` tensor).
    """
    D = z.shape[-1]
    prec = scale.pow(-2)  # [P, D]
    quad = z.pow(2) @ prec.T - 2.0 * z @ (loc * prec).T + (loc.pow(2) * prec).sum(-1)  # [..., B, P]
    return _studentt_from_quad(quad.clamp(min=0.0), scale, df, D)


def diag_studentt_log_prob(z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor, df: torch.Tensor) -> torch.Tensor:
    """The same multivariate Student-t, elementwise: z, loc, scale ``[..., D]``, df ``[...]`` -> ``[...]``."""
    quad = ((z - loc) / scale).pow(2).sum(-1)
    return _studentt_from_quad(quad, scale, df, z.shape[-1])


def _studentt_from_quad(quad, scale, df, D: int):
    log_norm = (
        torch.lgamma(0.5 * (df + D)) - torch.lgamma(0.5 * df) - 0.5 * D * torch.log(df * math.pi) - scale.log().sum(-1)
    )
    return log_norm - 0.5 * (df + D) * torch.log1p(quad / df)


def diag_normal_log_prob(z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``log N(z | loc, diag(scale^2))`` elementwise: ``[..., D] -> [...]``."""
    return (-0.5 * ((z - loc) / scale).pow(2) - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)


class DiagComponents:
    """P diagonal Gaussian (``df`` None) or multivariate Student-t components with their constants.

    One matrix product gives every (cell, component) pair: with features ``f(z) = [z*z, z, 1]``
    ``[..., B, 2D + 1]`` and per-component weights ``[P, 2D + 1]``, ``f(z) @ W^T`` is

    - Gaussian: ``-0.5 Q + log_norm`` (``W = [-s^-2 / 2, m s^-2, log_norm - sum_d m^2 s^-2 / 2]``),
      the log-density itself;
    - Student-t: the Mahalanobis distance ``Q`` (``W = [s^-2, -2 m s^-2, sum_d m^2 s^-2]``),
      then the t's elementwise transform.

    ``Q = sum_d (z_d - m_pd)^2 / s_pd^2`` as in :func:`diag_normal_log_prob_matrix` (equal values,
    tested). Build it once per step (``model.components()`` does) and reuse it for every z: the
    weights, precisions and normalising constants are then computed once, and the ``[B, P]``
    matrix costs one product forward and two backward, with no elementwise ``[B, P]`` pass for a
    Gaussian.
    """

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, df: torch.Tensor | None = None):
        self.loc, self.scale, self.df = loc, scale, df  # [P, D], [P, D], [P] or None
        prec = scale.pow(-2)  # [P, D]
        loc_prec = loc * prec
        centre = (loc * loc_prec).sum(-1, keepdim=True)  # [P, 1]: sum_d m^2 / s^2
        log_det = scale.log().sum(-1, keepdim=True)  # [P, 1]
        if df is None:
            log_norm = -log_det - 0.5 * loc.shape[-1] * math.log(2 * math.pi)
            self.weights = torch.cat([-0.5 * prec, loc_prec, log_norm - 0.5 * centre], -1)  # [P, 2D + 1]
        else:
            self.weights = torch.cat([prec, -2.0 * loc_prec, centre], -1)

    def log_prob_matrix(self, z: torch.Tensor) -> torch.Tensor:
        """``[..., B, D] -> [..., B, P]``."""
        features = torch.cat([z * z, z, torch.ones_like(z[..., :1])], -1)  # [..., B, 2D + 1]
        out = features @ self.weights.T
        if self.df is None:
            return out
        return _studentt_from_quad(out.clamp(min=0.0), self.scale, self.df, z.shape[-1])


def categorical_kl(log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """KL(q || p) of categoricals given by normalised log-probabilities: ``[..., P] -> [...]``."""
    return (log_q.exp() * (log_q - log_p)).sum(-1)


def path_index(ys, level_sizes) -> torch.Tensor:
    """Row-major index of the path (y1, ..., yL) among K1 x ... x KL paths (broadcasting):
    ``((y1 * K2 + y2) * K3 + y3) ...``, the one order of every path table."""
    out = ys[0]
    for y, K in zip(ys[1:], level_sizes[1:]):
        out = out * K + y
    return out


def all_enumerated(ys) -> bool:
    """Whether every y is a whole support enumerated in parallel by Pyro (its mark on the value)."""
    return all(getattr(y, "_pyro_categorical_support", None) is not None for y in ys)


def take_enumerated(table: torch.Tensor, ys) -> torch.Tensor:
    """``Vindex(table)[(*ys, ...)]``: index the leading dims of ``table [K1, ..., Km, *T]`` by ys.

    When every y was enumerated in parallel by Pyro (each is its whole support ``0..K-1`` along
    its own dim, the mark Pyro's own ``Categorical.log_prob`` uses), the result is a permuted
    *view* of ``table``: no gather forward and no scatter backward, which is most of what
    indexing costs at these sizes. Other ys (samples, fixed values) go through ``Vindex``.
    Result: ``broadcast(ys shapes) + T``.
    """
    if not ys:
        return table
    if not all_enumerated(ys):
        return Vindex(table)[tuple(ys)]
    m, n = len(ys), max(y.dim() for y in ys)
    pos = [n - y.dim() for y in ys]  # where y's support sits in the broadcast shape
    order = sorted(range(m), key=pos.__getitem__)
    shape = [1] * n
    for i in range(m):
        shape[pos[i]] = table.shape[i]
    return table.permute(*order, *range(m, table.dim())).reshape(*shape, *table.shape[m:])


class ComponentDensity(TorchDistribution):
    """p(z | c): component ``c`` of a mixture whose P components are held as ``[P, D]`` tables.

    ``c`` is an integer tensor of component indices (e.g. built from enumerated cluster
    variables, shape ``[K_L, ..., K_1, 1]``), or a tuple of per-level values ``(y1, ..., yL)``
    naming the path of a hierarchy whose P = K1 x ... x KL components are in row-major order.
    ``log_prob(z)`` picks the cheapest form:

    - z without enumeration dims (``[B, D]``, drawn once from q(z | x)): the ``[B, P]`` matrix
      of all component log-densities (three matrix products), then ``c`` indexes it, giving
      ``[K_L, ..., K_1, B]``; for enumerated paths that index is a view (:func:`take_enumerated`);
    - z with enumeration dims (drawn from q(z | x, c)): elementwise with gathered parameters.

    ``df`` None means Gaussian components, else multivariate Student-t with ``df [P]``.
    ``components``: the same loc, scale and df as a :class:`DiagComponents` already built this step
    (its constants are then not computed again). The matrix of the last z is kept: a model that
    calls ``log_prob_matrix(z)`` on the value of its own ``z`` site (for a regulariser, or the KL
    of the y's) shares it with the site's ``log_prob``, so the matrix is evaluated once per step.
    """

    arg_constraints = {}
    support = constraints.real_vector

    def __init__(
        self,
        c,
        loc,
        scale,
        df=None,
        batch_size: int | None = None,
        level_sizes=None,
        validate_args=False,
        components: DiagComponents | None = None,
    ):
        self.c, self.loc, self.scale, self.df = c, loc, scale, df
        self.components = components
        self._memo = {}  # {"z": the last z, "matrix": its [B, P] matrix}; shared with expanded copies
        self.level_sizes = level_sizes  # for a tuple c: (K1, ..., KL)
        if isinstance(c, tuple) and level_sizes is None:
            raise ValueError("a path (y1, ..., yL) needs level_sizes")
        batch_shape = (
            torch.Size()
            if c is None
            else (torch.broadcast_shapes(*(y.shape for y in c)) if isinstance(c, tuple) else c.shape)
        )
        batch_shape = batch_shape if batch_size is None else torch.broadcast_shapes(batch_shape, (batch_size,))
        super().__init__(batch_shape, loc.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(ComponentDensity, _instance)
        new.c, new.loc, new.scale, new.df, new.level_sizes = self.c, self.loc, self.scale, self.df, self.level_sizes
        new.components, new._memo = self.components, self._memo
        super(ComponentDensity, new).__init__(torch.Size(batch_shape), self.event_shape, validate_args=False)
        return new

    @property
    def index(self) -> torch.Tensor:
        """Component indices: ``c`` itself, or the row-major index of the path (y1, ..., yL)."""
        return path_index(self.c, self.level_sizes) if isinstance(self.c, tuple) else self.c

    def log_prob_matrix(self, z):  # [..., B, D] -> [..., B, P]
        if self._memo.get("z") is z:
            return self._memo["matrix"]
        if self.components is None:
            self.components = DiagComponents(self.loc, self.scale, self.df)
        matrix = self.components.log_prob_matrix(z)
        self._memo.update(z=z, matrix=matrix)
        return matrix

    def log_prob(self, z):
        if z.dim() == 2:  # one z per cell for all components
            matrix = self.log_prob_matrix(z)  # [B, P]
            if isinstance(self.c, tuple) and all_enumerated(self.c):  # a view: [K1..KL, B] -> [KL..K1, B]
                table = matrix.reshape(matrix.shape[0], *self.level_sizes).movedim(0, -1)
                return take_enumerated(table, self.c).squeeze(-2)
            return Vindex(matrix)[..., self.index]  # [K?, B]
        c = self.index
        loc, scale = self.loc[c], self.scale[c]  # [K?, 1, D]
        if self.df is None:
            return diag_normal_log_prob(z, loc, scale)
        return diag_studentt_log_prob(z, loc, scale, self.df[c])

    def sample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        c = self.index
        loc, scale = self.loc[c].expand(shape), self.scale[c].expand(shape)
        with torch.no_grad():
            if self.df is None:
                return torch.normal(loc, scale)
            # multivariate t: one chi-square per draw (per cell), shared by the D coordinates
            df = self.df[c].expand(shape[:-1])  # [*sample, *batch]
            chi2 = torch.distributions.Chi2(df).sample().unsqueeze(-1)  # [*sample, *batch, 1]
            eps = torch.randn(shape, dtype=loc.dtype, device=loc.device)
            return loc + scale * eps * (df.unsqueeze(-1) / chi2).sqrt()


class PathMixture(TorchDistribution):
    """p(z) = sum_p w_p f_p(z): the mixture over P components with the component summed out.

    ``log_weights [P]`` (normalised), ``components``: a :class:`DiagComponents` built this step.
    ``log_prob(z)`` is ``logsumexp_p(log w_p + log f_p(z))`` over the ``[..., B, P]`` matrix of
    :meth:`DiagComponents.log_prob_matrix`: exactly what ``TraceEnum_ELBO`` computes when the
    component index is a model site enumerated in parallel, without the enumeration machinery
    (no discrete sites, no tensor contraction). The joint ``log w_p + log f_p(z)`` of the last z
    is kept, so a model that needs the posterior p(c | z) of its own z site for a regulariser
    (:meth:`log_posterior`) shares the matrix with ``log_prob``. ``sample``: a component from
    the weights, then a draw from it, per cell.
    """

    arg_constraints = {}
    support = constraints.real_vector

    def __init__(self, log_weights, components: DiagComponents, batch_size: int, validate_args=False):
        self.log_weights, self.components = log_weights, components
        self._memo = {}  # {"z": the last z, "joint": its [..., B, P] log w + log f}
        super().__init__(torch.Size((batch_size,)), components.loc.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(PathMixture, _instance)
        new.log_weights, new.components, new._memo = self.log_weights, self.components, self._memo
        super(PathMixture, new).__init__(torch.Size(batch_shape), self.event_shape, validate_args=False)
        return new

    def log_joint(self, z):
        """``log w_p + log f_p(z)``: ``[..., B, D] -> [..., B, P]``."""
        if self._memo.get("z") is not z:
            self._memo.update(z=z, joint=self.log_weights + self.components.log_prob_matrix(z))
        return self._memo["joint"]

    def log_prob(self, z):  # [..., B, D] -> [..., B]
        return self.log_joint(z).logsumexp(-1)

    def log_posterior(self, z):
        """log p(c | z): ``[..., B, D] -> [..., B, P]``."""
        return self.log_joint(z).log_softmax(-1)

    def sample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)  # [*sample, *batch, D]
        with torch.no_grad():
            c = torch.distributions.Categorical(logits=self.log_weights).sample(shape[:-1])  # [*sample, *batch]
            comp = self.components
            return ComponentDensity(c, comp.loc, comp.scale, comp.df, validate_args=False).sample()
