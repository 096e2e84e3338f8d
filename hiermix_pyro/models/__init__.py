"""The models, chosen by name. Each file holds one model with its ``model()`` and ``guide()``."""

from __future__ import annotations

from ..config import ModelConfig
from .base import CountModel
from .gmm import GMM
from .indmom import IndMoMVAE
from .mixture import MixtureVAE
from .momix import MoMixVAE
from .vae import VAE
from .vampprior import VampPrior
from .vmm import VMM

MODELS: dict[str, type[CountModel]] = {
    "vae": VAE,
    "mixture": MixtureVAE,
    "indmom": IndMoMVAE,
    "momix": MoMixVAE,
    "vampprior": VampPrior,
    "gmm": GMM,
    "vmm": VMM,
}


def check_model_name(name: str) -> None:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}")


def build_model(name: str, adata, config: ModelConfig = ModelConfig(), seed: int = 0) -> CountModel:
    """Instantiate model ``name`` with sizes taken from a prepared AnnData.

    ``seed`` seeds every random number of the construction: the networks' initial weights and any
    data-dependent initialisation (pseudo-inputs, PCA / VAE pre-training / k-means of the
    hierarchical mixtures). A setting of ``config`` that the model does not use is an error.
    """
    from ..train import seed_everything

    check_model_name(name)
    MODELS[name].check_options(config, name)
    seed_everything(seed)
    return MODELS[name].from_adata(adata, config, seed=seed)


__all__ = [
    "MODELS",
    "CountModel",
    "VAE",
    "MixtureVAE",
    "IndMoMVAE",
    "MoMixVAE",
    "VampPrior",
    "GMM",
    "VMM",
    "build_model",
    "check_model_name",
]
