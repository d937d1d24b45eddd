"""Building blocks of VAEs: priors, variational posteriors and likelihoods."""
from lvmfast.nn.likelihoods import (BernoulliLikelihood, CategoricalLikelihood, GaussianLikelihood,
                                    make_likelihood)
from lvmfast.nn.posteriors import (GaussianPosterior, HouseholderFlowPosterior, SylvesterHouseholderPosterior,
                                   SylvesterOrthogonalPosterior, SylvesterTriangularPosterior,
                                   VonMisesFisherPosterior, make_posterior)
from lvmfast.nn.priors import (FlowPrior, GTMPrior, GTMVampPrior, HypersphericalUniformPrior,
                               MixtureOfGaussiansPrior, StandardGaussianPrior, VampPrior, make_prior)

__all__ = [
    "BernoulliLikelihood", "CategoricalLikelihood", "GaussianLikelihood", "make_likelihood",
    "GaussianPosterior", "HouseholderFlowPosterior", "SylvesterHouseholderPosterior",
    "SylvesterOrthogonalPosterior", "SylvesterTriangularPosterior", "VonMisesFisherPosterior",
    "make_posterior",
    "FlowPrior", "GTMPrior", "GTMVampPrior", "HypersphericalUniformPrior", "MixtureOfGaussiansPrior",
    "StandardGaussianPrior", "VampPrior", "make_prior",
]
