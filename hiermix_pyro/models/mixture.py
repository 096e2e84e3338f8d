"""The flat Gaussian-mixture VAE: the one-level case of :class:`~hiermix_pyro.models.momix.MoMixVAE`.

Reference: Grønbech et al. (2020), scVAE: variational auto-encoders for single-cell gene
expression data, Bioinformatics 36(16) (its GMVAE is ``guide="structured"`` here).

``mixture`` and ``momix`` share one implementation, so a benchmark that compares them changes
only the hierarchy: the same guides, component families (``prior``), initialisation (``init``)
and usage regulariser (``usage_lambda``) apply to both.
"""

from __future__ import annotations

from ..config import ModelConfig
from .base import n_batches, n_classes
from .momix import MoMixVAE


class MixtureVAE(MoMixVAE):
    """A mixture of K learned components over z, one cluster variable y.

    Generative process, for each cell n::

        y_n ~ Cat(pi)
        z_n | y_n ~ N(mu_{y_n}, diag sigma_{y_n}^2)     (prior="normal"; "studentt": multivariate t)
        x_n | z_n, s_n ~ NB(l_n * softmax(f(z_n, s_n)), theta)

    Guides, both exact in y (see :class:`MoMixVAE` with L = 1):

    - ``guide="collapsed"`` (the package default, as for momix): q(z | x), y summed out in the model;
    - ``guide="structured"``: q(y | x) q(z | x, y), y enumerated in the guide: scVAE's GMVAE, whose
      decoder runs once per component. scVAE keeps p(y) uniform; here pi is learned, as in momix.
    - ``guide="structured_y"``: q(y | x) q(z | x), y enumerated in the guide, one z per cell (the
      structured guide's cheap variant; not in scVAE).

    Cluster of a cell: argmax of its posterior over y. Sample-site shapes: those of
    :class:`MoMixVAE` with one level (``y1`` is the cluster variable).
    """

    pyro_name = "mixture"
    options = tuple(o for o in MoMixVAE.options if o != "level_sizes") + ("n_components",)  # one level: K
    config_defaults = {"init": "vae_kmeans", "init_epochs": 10, "usage_lambda": 100.0}

    def __init__(self, n_genes: int, n_batches: int = 0, config: ModelConfig = ModelConfig(), n_components: int = 10):
        super().__init__(n_genes, n_batches, config, level_sizes=(n_components,))

    @classmethod
    def from_adata(cls, adata, config: ModelConfig = ModelConfig(), seed: int = 0) -> MixtureVAE:
        """K = ``config.n_components``, else the number of classes at the finest label level;
        components initialised by ``config.init`` with ``seed``."""
        from ..initialise import initialise

        K = config.n_components or (n_classes(adata) or [10])[-1]
        model = cls(adata.n_vars, n_batches(adata), config, n_components=K)
        return initialise(model, adata, model.config.init, seed=seed)

    @property
    def K(self) -> int:
        return self.level_sizes[0]
