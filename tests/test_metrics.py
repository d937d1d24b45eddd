"""The Fréchet distance against closed forms, and the digits' feature classifier."""
import numpy as np
import pytest
import scipy.linalg
import torch

from lvmfast.data import load_digits
from lvmfast.metrics import DigitFeatures, digit_features, digits_fd, digits_with_labels, frechet_distance


def with_moments(n, mean, cov, seed=0):
    """n points whose sample mean and (N - 1)-normalized covariance are exactly mean and cov."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, len(mean), generator=g, dtype=torch.float64)
    z = z - z.mean(0)
    z = z @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(z.T))).T  # sample covariance I
    return z @ torch.linalg.cholesky(cov).T + mean


def random_cov(d, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def test_frechet_distance_of_a_set_with_itself_is_zero_and_symmetric():
    a = torch.randn(300, 20, dtype=torch.float64) @ torch.randn(20, 20, dtype=torch.float64)
    b = torch.randn(200, 20, dtype=torch.float64) * 2 + 1
    scale = frechet_distance(a, b)
    assert scale > 1
    assert frechet_distance(a, a) < 1e-8 * scale
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9)


def test_frechet_distance_grows_with_a_mean_shift():
    a = with_moments(400, torch.zeros(8, dtype=torch.float64), random_cov(8, 1))
    direction = torch.randn(8, dtype=torch.float64)
    fds = [frechet_distance(a, a + c * direction) for c in (0.0, 0.5, 1.0, 2.0)]
    assert fds == sorted(fds) and fds[0] < 1e-9
    # equal covariances: only the squared mean difference remains
    assert fds[-1] == pytest.approx(4 * direction.square().sum().item(), rel=1e-9)


def test_frechet_distance_matches_closed_forms():
    d = 6
    m1, m2 = torch.randn(d, dtype=torch.float64), torch.randn(d, dtype=torch.float64)
    # diagonal covariances: |m1 - m2|^2 + sum (s1 - s2)^2
    s1, s2 = torch.rand(d, dtype=torch.float64) + 0.5, torch.rand(d, dtype=torch.float64) + 0.5
    a, b = with_moments(500, m1, torch.diag(s1 ** 2), 1), with_moments(300, m2, torch.diag(s2 ** 2), 2)
    expected = (m1 - m2).square().sum() + (s1 - s2).square().sum()
    assert frechet_distance(a, b) == pytest.approx(expected.item(), rel=1e-8)
    # full covariances: the textbook formula with scipy's general matrix square root
    c1, c2 = random_cov(d, 3), random_cov(d, 4)
    a, b = with_moments(500, m1, c1, 5), with_moments(300, m2, c2, 6)
    cross = scipy.linalg.sqrtm(c1.numpy() @ c2.numpy()).real
    expected = (m1 - m2).square().sum().item() + np.trace(c1.numpy() + c2.numpy() - 2 * cross)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-7)


def test_frechet_distance_rejects_bad_shapes():
    with pytest.raises(ValueError, match="features"):
        frechet_distance(torch.randn(10, 3), torch.randn(10, 4))
    with pytest.raises(ValueError, match="two samples"):
        frechet_distance(torch.randn(1, 3), torch.randn(10, 3))


def test_digit_labels_follow_the_training_split():
    (x, y), (hx, hy) = digits_with_labels()
    data = load_digits()
    assert torch.equal(x, data.train) and torch.equal(hx, torch.cat([data.val, data.test]))
    assert torch.equal(hy[-len(data.test):], data.test_labels) and y.shape == (1000,)


def test_digits_fd_of_real_and_degraded_digits():
    features = digit_features()
    assert digit_features() is features  # trained once per process
    assert features.heldout_accuracy > 0.9
    data = load_digits()
    real = digits_fd(data.train)
    assert real["fd"] == pytest.approx(real["fd_reference"]) and real["num_classes"] == 10
    assert sum(real["class_counts"]) == 1000
    assert digits_fd(torch.cat([data.val, data.test]))["fd"] < 1e-6  # the held-out set is val + test
    noise = digits_fd(np.random.default_rng(0).integers(0, 17, (1000, 64)))
    assert noise["fd_ratio"] > 5
    ones = digits_fd(data.train[features.predict(data.train) == 1])
    assert ones["num_classes"] == 1 and ones["fd_ratio"] > 3
    # deterministic: a fresh classifier with the same seed gives the same features
    torch.manual_seed(123)  # the global generator plays no part
    again = DigitFeatures()
    torch.testing.assert_close(again.features(data.test[:50]), features.features(data.test[:50]))
