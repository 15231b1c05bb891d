"""Data loading and validation: user files, built-in data sets, and the epoch-wise minibatch sampler."""

import warnings

import numpy as np
import pytest
import torch

from vaeconverge.config import ConfigError, RunConfig, SyntheticConfig
from vaeconverge.data import PermutationBatches, check_data, load_dataset
from vaeconverge.data.synthetic import make_synthetic_linear

# A small array whose values are exactly representable in float32 and in a CSV file.
ARRAY = np.array([[0.0, 0.25, 0.5], [1.0, 0.75, 0.125], [0.5, 0.5, 0.0625], [0.0, 1.0, 0.375]])
EXPECTED = torch.tensor(ARRAY, dtype=torch.float32)


def load(path, **overrides):
    """load_dataset on a file with a batch size that fits the small test arrays."""
    options = {"batch_size": 2, "likelihood": "bernoulli", **overrides}
    return load_dataset(RunConfig(data=str(path), **options))


def assert_same_tensor(x):
    assert x.dtype == torch.float32
    assert x.shape == EXPECTED.shape
    assert torch.equal(x, EXPECTED)


# ---------------------------------------------------------------------------------------------- file formats


def test_npy_round_trip(tmp_path):
    """An .npy file (stored as float64) loads as the same values in float32."""
    path = tmp_path / "x.npy"
    np.save(path, ARRAY)
    dataset = load(path)
    assert_same_tensor(dataset.x)
    assert dataset.name == str(path)
    assert dataset.truth is None


def test_npy_integer_array_is_converted_to_float32(tmp_path):
    """Integer arrays are accepted and converted, not rejected or left as int."""
    path = tmp_path / "ints.npy"
    np.save(path, np.array([[0, 1], [1, 0], [1, 1]], dtype=np.int64))
    x = load(path).x
    assert x.dtype == torch.float32
    assert torch.equal(x, torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]))


def test_npz_single_array_any_key(tmp_path):
    """An .npz holding one array is read whatever that array is called."""
    path = tmp_path / "one.npz"
    np.savez(path, whatever_name=ARRAY)
    assert_same_tensor(load(path).x)


def test_npz_several_arrays_uses_key_x(tmp_path):
    """With several arrays, the one named 'x' is the data."""
    path = tmp_path / "many.npz"
    np.savez(path, labels=np.arange(4), x=ARRAY, other=np.ones((2, 2)))
    assert_same_tensor(load(path).x)


def test_npz_compressed_several_arrays_uses_key_data(tmp_path):
    """'data' is the other accepted name, and compressed archives work too."""
    path = tmp_path / "many.npz"
    np.savez_compressed(path, labels=np.arange(4), data=ARRAY)
    assert_same_tensor(load(path).x)


def test_npz_several_arrays_without_usable_key(tmp_path):
    """Several arrays and none named 'x' or 'data': a ConfigError that lists what the file holds."""
    path = tmp_path / "ambiguous.npz"
    np.savez(path, first=ARRAY, second=ARRAY)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.option == "--data"
    message = str(info.value)
    assert str(path) in message
    assert "first" in message and "second" in message


def test_csv_without_header(tmp_path):
    path = tmp_path / "plain.csv"
    np.savetxt(path, ARRAY, delimiter=",")
    assert_same_tensor(load(path).x)


def test_csv_with_header_row(tmp_path):
    """A first row of column names is skipped."""
    path = tmp_path / "header.csv"
    np.savetxt(path, ARRAY, delimiter=",", header="a,b,c", comments="")
    assert path.read_text().splitlines()[0] == "a,b,c"  # the header really is there, uncommented
    assert_same_tensor(load(path).x)


def test_csv_single_column_is_two_dimensional(tmp_path):
    """A one-column CSV is N x 1 data, not a 1-D vector."""
    path = tmp_path / "column.csv"
    path.write_text("0.5\n0.25\n1\n")
    x = load(path).x
    assert x.shape == (3, 1)
    assert torch.equal(x[:, 0], torch.tensor([0.5, 0.25, 1.0]))


# ---------------------------------------------------------------------------------------------- file errors


def expect_data_error(path, option="--data", **overrides):
    """load() must fail with a ConfigError on ``option``; return its message."""
    with pytest.raises(ConfigError) as info:
        load(path, **overrides)
    assert info.value.option == option
    assert str(info.value).startswith(f"{option}: ")
    return str(info.value)


@pytest.mark.parametrize(
    ("array", "words"),
    [
        (np.arange(5.0), ["2-D", "(5,)"]),
        (np.zeros((2, 3, 4)), ["2-D", "(2, 3, 4)"]),
        (np.zeros((0, 5)), ["empty", "(0, 5)"]),
        (np.zeros((5, 0)), ["empty", "(5, 0)"]),
    ],
    ids=["1-D", "3-D", "no-rows", "no-columns"],
)
def test_wrong_shapes(tmp_path, array, words):
    """Arrays that are not a non-empty N x D matrix are rejected, and the message gives the shape."""
    path = tmp_path / "bad.npy"
    np.save(path, array)
    message = expect_data_error(path)
    for word in words:
        assert word in message


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_values(tmp_path, bad):
    """NaN and +-inf are rejected; the message says which row holds the first one."""
    array = ARRAY.copy()
    array[2, 1] = bad
    path = tmp_path / "nonfinite.npy"
    np.save(path, array)
    message = expect_data_error(path)
    assert "NaN or infinite" in message
    assert "row 2" in message


@pytest.mark.parametrize("value", [-0.5, 1.5])
def test_bernoulli_needs_unit_interval_but_gaussian_does_not(tmp_path, value):
    """Values outside [0, 1] fail for a Bernoulli likelihood (naming --likelihood) but load for a Gaussian."""
    array = ARRAY.copy()
    array[1, 2] = value
    path = tmp_path / "outside.npy"
    np.save(path, array)
    message = expect_data_error(path, option="--likelihood", likelihood="bernoulli")
    assert "[0, 1]" in message
    assert f"{value:.4g}" in message
    x = load(path, likelihood="gaussian").x
    assert x[1, 2].item() == value


def test_batch_size_larger_than_data(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, ARRAY)
    message = expect_data_error(path, option="--batch-size", batch_size=5)
    assert "5" in message and "4 training examples" in message
    assert load(path, batch_size=4).x.shape == (4, 3)  # B == N is fine


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "x.txt"
    np.savetxt(path, ARRAY, delimiter=",")
    message = expect_data_error(path)
    assert "unsupported file type" in message
    assert str(path) in message


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere" / "x.npy"
    message = expect_data_error(path)
    assert "no such file" in message
    assert str(path) in message


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".csv"])
def test_corrupt_file(tmp_path, suffix):
    """A file of random bytes is a ConfigError naming the file, not a numpy traceback."""
    path = tmp_path / f"garbage{suffix}"
    path.write_bytes(np.random.default_rng(0).bytes(256))
    message = expect_data_error(path)
    assert "cannot read" in message
    assert str(path) in message


@pytest.mark.parametrize("text", ["", "a,b,c\n"], ids=["empty-file", "header-only"])
def test_csv_without_rows_is_a_clean_error(tmp_path, text):
    """A CSV with no data rows is reported as empty data, with no numpy warning on the side."""
    path = tmp_path / "empty.csv"
    path.write_text(text)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        message = expect_data_error(path)
    assert "empty" in message


def test_csv_with_a_malformed_first_row_is_an_error_not_a_header(tmp_path):
    """A numeric but ragged first row is not mistaken for a header (which would drop a data row)."""
    path = tmp_path / "ragged.csv"
    path.write_text("1,2\n3\n")
    assert "cannot read" in expect_data_error(path)


def test_truncated_npy(tmp_path):
    """A valid .npy header whose data was cut short is reported as unreadable."""
    path = tmp_path / "short.npy"
    np.save(path, np.ones((100, 10)))
    path.write_bytes(path.read_bytes()[:400])
    message = expect_data_error(path)
    assert "cannot read" in message


def test_non_numeric_array(tmp_path):
    path = tmp_path / "strings.npy"
    np.save(path, np.array([["a", "b"], ["c", "d"]]))
    message = expect_data_error(path)
    assert "numeric" in message


def test_unknown_builtin_name():
    """A name that is neither built in nor looks like a path lists the data sets known by name."""
    with pytest.raises(ConfigError) as info:
        load_dataset(RunConfig(data="cifar10"))
    assert info.value.option == "--data"
    assert all(name in str(info.value) for name in ("digits", "synthetic-linear", "mnist", "fashion-mnist"))


def test_check_data_accepts_valid_tensor():
    """check_data returns quietly on good data (the error tests above show it is not a no-op)."""
    assert check_data(EXPECTED, "bernoulli", 4) is None
    with pytest.raises(ConfigError):
        check_data(EXPECTED, "bernoulli", 5)


# ---------------------------------------------------------------------------------------------- built-in data


def test_digits():
    dataset = load_dataset(RunConfig(data="digits"))
    x = dataset.x
    assert dataset.name == "digits"
    assert x.shape == (1797, 64)
    assert x.dtype == torch.float32
    assert x.min().item() == 0.0
    assert x.max().item() == 1.0  # grey levels 0..16 divided by 16


def synthetic(**sizes):
    config = RunConfig(data="synthetic-linear", likelihood="gaussian", synthetic=SyntheticConfig(**sizes))
    return load_dataset(config)


def test_synthetic_shape_and_truth():
    dataset = synthetic(n_samples=300, data_dim=7, latent_dim=2, noise_std=0.3, seed=4)
    assert dataset.x.shape == (300, 7)
    assert dataset.x.dtype == torch.float32
    truth = dataset.truth
    assert truth is not None
    assert truth.weight.shape == (7, 2)
    assert truth.bias.shape == (7,)
    assert truth.noise_std == 0.3
    assert torch.equal(truth.x, dataset.x)


def test_synthetic_default_shape():
    """With the default SyntheticConfig the data are n_samples x data_dim."""
    s = SyntheticConfig()
    assert synthetic().x.shape == (s.n_samples, s.data_dim)


def test_synthetic_seed_determines_data():
    a = synthetic(n_samples=100, data_dim=5, latent_dim=2, seed=1).x
    b = synthetic(n_samples=100, data_dim=5, latent_dim=2, seed=1).x
    c = synthetic(n_samples=100, data_dim=5, latent_dim=2, seed=2).x
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_synthetic_covariance_matches_model():
    """The sample covariance of 20000 draws matches W W^T + c^2 I.

    Tolerance: each entry of a sample covariance of Gaussian data has standard error
    sqrt((S_ii S_jj + S_ij^2) / n); every entry must lie within 5 standard errors, and the whole
    matrix within 3% in Frobenius norm. The same check against W W^T alone (noise term left out)
    must fail, so the tolerance is tight enough to see the c^2 I term.
    """
    n, noise_std = 20000, 0.5
    truth = make_synthetic_linear(n, data_dim=8, latent_dim=3, noise_std=noise_std, seed=0)
    x = truth.x.double()
    w = truth.weight
    expected = w @ w.T + noise_std**2 * torch.eye(8, dtype=torch.float64)
    sample = torch.cov(x.T)

    diag = expected.diagonal()
    std_err = ((diag[:, None] * diag[None, :] + expected.square()) / n).sqrt()
    assert ((sample - expected).abs() <= 5 * std_err).all()
    assert torch.linalg.norm(sample - expected) <= 0.03 * torch.linalg.norm(expected)
    # the mean is the bias, to within 5 standard errors per coordinate
    assert ((x.mean(0) - truth.bias).abs() <= 5 * (diag / n).sqrt()).all()

    without_noise = w @ w.T
    assert not ((sample - without_noise).abs() <= 5 * std_err).all()


# ---------------------------------------------------------------------------------------------- minibatches


def index_rows(n):
    """Data whose single feature is the row index, so a batch shows which rows it holds."""
    return torch.arange(n, dtype=torch.float32).unsqueeze(1)


def batch_indices(batch):
    return [int(v) for v in batch[:, 0].tolist()]


@pytest.mark.parametrize(("n", "b"), [(10, 3), (12, 4), (7, 7), (5, 1)])
def test_permutation_batches_epochs(n, b):
    """Each epoch is N // B full batches of distinct rows; the epoch counter follows along."""
    batches = PermutationBatches(index_rows(n), b, torch.Generator().manual_seed(0))
    assert batches.batches_per_epoch == n // b
    assert batches.epoch == -1
    for epoch in range(3):
        seen = []
        for i in range(n // b):
            batch = batches.next()
            assert batches.epoch == epoch
            assert batch.shape == (b, 1)
            seen += batch_indices(batch)
            assert batches.epoch_finished == (i == n // b - 1)
        assert len(seen) == len(set(seen)) == (n // b) * b
        assert set(seen) <= set(range(n))
    batches.next()
    assert batches.epoch == 3


def test_permutation_batches_reshuffle_each_epoch():
    """A new permutation is drawn each epoch (over 5 epochs of 20 rows the orders are not all equal)."""
    batches = PermutationBatches(index_rows(20), 20, torch.Generator().manual_seed(0))
    orders = {tuple(batch_indices(batches.next())) for _ in range(5)}
    assert len(orders) > 1


def test_permutation_batches_seeded():
    """The same generator seed gives the same batch sequence; another seed a different one."""

    def sequence(seed):
        batches = PermutationBatches(index_rows(30), 4, torch.Generator().manual_seed(seed))
        return [batch_indices(batches.next()) for _ in range(20)]

    assert sequence(3) == sequence(3)
    assert sequence(3) != sequence(4)


@pytest.mark.parametrize("b", [0, -1, 11])
def test_permutation_batches_bad_batch_size(b):
    with pytest.raises(ValueError, match="batch size"):
        PermutationBatches(index_rows(10), b, torch.Generator().manual_seed(0))
