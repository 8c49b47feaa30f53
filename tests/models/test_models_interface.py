"""Models, what callers ask of them: the linear models' derivative split,
declared capabilities, buffer overwrite and reuse, predictions, seeded init,
numerical stability and the registry."""
import numpy as np
import pytest

from mpidsgd.models import MODELS, build_model
from model_cases import CASES, LINEAR, log_softmax_ref, make, xent_ref


# -- the linear models' derivative split ---------------------------------------

@pytest.mark.parametrize("case", LINEAR)
def test_grad_from_derivs_plus_l2_equals_loss_grad(case):
    model, params, X, y = make(case, l2=0.25, batch=7)
    grad = model.zeros()
    model.loss_grad(params, X, y, grad)
    D = model.sample_derivs(params, X, y)
    assert D.shape == ((7,) if model.name != "softmax" else (7, model.n_outputs))
    g = np.full(params.size, np.nan)
    model.grad_from_derivs(X, D, g)
    np.testing.assert_allclose(g + 0.25 * params, grad, rtol=0, atol=1e-12)
    # scale multiplies; the mean is over the batch, sample by sample
    g3 = model.zeros()
    model.grad_from_derivs(X, D, g3, scale=3.0)
    np.testing.assert_allclose(g3, 3.0 * g, rtol=1e-13, atol=1e-15)
    per_sample = np.zeros_like(g)
    one = model.zeros()
    for i in range(7):
        model.grad_from_derivs(X[i:i + 1], D[i:i + 1], one)
        per_sample += one / 7
    np.testing.assert_allclose(per_sample, g, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("case", LINEAR)
def test_sample_derivs_are_per_sample_loss_derivatives(case):
    model, params, X, y = make(case, l2=0.0, batch=4)
    D = model.sample_derivs(params, X, y)
    Xf, v = X.reshape(4, -1), model.layout.views(params)
    z = Xf @ v["W"] + v["b"]
    if model.name == "ridge":
        ref = z - y
    elif model.name == "logreg":
        ref = 1 / (1 + np.exp(-z)) - y
    else:
        ref = np.exp(log_softmax_ref(z))
        ref[np.arange(4), y] -= 1
    np.testing.assert_allclose(D, ref, rtol=1e-12, atol=1e-15)
    assert D is not model.sample_derivs(params, X, y)   # a new array: safe to store


# -- capabilities: what algorithms may ask of a model ------------------------------

@pytest.mark.parametrize("case", list(CASES))
def test_capabilities_are_declared_per_model(case):
    model = make(case)[0]
    assert model.per_sample_derivs == (case in LINEAR)
    assert model.stored_gradients
    assert model.closed_form_optimum == (model.name == "ridge")


@pytest.mark.parametrize("case", LINEAR)
def test_loss_and_derivs_gives_the_data_loss(case):
    model, params, X, y = make(case, l2=0.25, batch=5)
    loss, _ = model.loss_and_derivs(params, X, y)
    assert isinstance(loss, float)
    # the DATA loss: loss() minus its L2 term
    assert loss == pytest.approx(model.loss(params, X, y) - 0.125 * params @ params, rel=1e-12)


@pytest.mark.parametrize("case", LINEAR)
def test_loss_and_derivs_gives_the_sample_derivs(case):
    model, params, X, y = make(case, l2=0.25, batch=5)
    _, D = model.loss_and_derivs(params, X, y)
    np.testing.assert_array_equal(D, model.sample_derivs(params, X, y))


@pytest.mark.parametrize("case", LINEAR)
def test_loss_and_derivs_shape_is_derivs_shape(case):
    model, params, X, y = make(case, l2=0.25, batch=5)
    _, D = model.loss_and_derivs(params, X, y)
    assert D.shape == model.derivs_shape(5)


def test_ridge_quadratic_terms_give_the_summed_data_loss():
    model, params, X, y = make("ridge", l2=0.0, batch=9)
    M, r, yy = model.quadratic_terms(X, y)
    assert M.dtype == r.dtype == np.float64
    q = 0.5 * (params @ M @ params - 2 * r @ params + yy)
    assert q == pytest.approx(9 * model.loss(params, X, y), rel=1e-12)


# -- buffers: overwrite, reuse across batch sizes --------------------------------

@pytest.mark.parametrize("case", list(CASES))
def test_loss_grad_overwrites_grad(case):
    model, params, X, y = make(case)
    clean = model.zeros()
    model.loss_grad(params, X, y, clean)
    for garbage in (np.nan, 1e30):
        g = np.full(params.size, garbage)
        model.loss_grad(params, X, y, g)
        np.testing.assert_array_equal(g, clean)


@pytest.mark.parametrize("case", list(CASES))
def test_work_buffers_survive_batch_size_changes(case):
    model, params, X, y = make(case, batch=9)
    fresh = lambda: make(case, batch=9)[0]          # noqa: E731
    for sl in (slice(0, 5), slice(0, 3), slice(2, 9), slice(0, 5)):
        g, g_ref = model.zeros(), model.zeros()
        loss = model.loss_grad(params, X[sl], y[sl], g)
        model.predict(params, X)                     # a different batch size in between
        assert loss == fresh().loss_grad(params, X[sl], y[sl], g_ref)
        np.testing.assert_array_equal(g, g_ref)


# -- predictions, init, stability, registry ------------------------------------

@pytest.mark.parametrize("case", list(CASES))
def test_predict_shapes(case):
    model, params, X, _ = make(case, batch=8)
    pred = model.predict(params, X)
    assert pred.shape == (8,)
    if model.task == "classification":
        assert np.issubdtype(pred.dtype, np.integer)
        n_classes = 2 if model.name == "logreg" else model.n_outputs
        assert pred.min() >= 0 and pred.max() < n_classes


@pytest.mark.parametrize("case", list(CASES))
def test_init_is_seeded_with_zero_biases(case):
    model = make(case)[0]
    a, b = model.zeros(), model.zeros()
    model.init(a, np.random.default_rng(7))
    model.init(b, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    views = model.layout.views(a)
    for name, view in views.items():
        is_bias = name == "b" or name.endswith(".b") or (name[0] == "b" and name[1:].isdigit())
        if is_bias or model.name in ("ridge", "logreg", "softmax"):
            assert not view.any(), name
        else:
            assert view.std() > 0, name


def test_he_init_scale():
    model = build_model("mlp", input_shape=(400,), n_outputs=10, hidden=(300,))
    p = model.zeros()
    model.init(p, np.random.default_rng(0))
    W0, W1 = model.layout.view(p, "W0"), model.layout.view(p, "W1")
    assert W0.std() == pytest.approx((2 / 400) ** 0.5, rel=0.02)
    assert np.abs(W1).max() <= (6 / 310) ** 0.5


def test_extreme_logits_stay_finite():
    rng = np.random.default_rng(1)
    X = 1e3 * rng.standard_normal((16, 4))
    for name, y in (("logreg", rng.integers(0, 2, 16)), ("softmax", rng.integers(0, 3, 16))):
        for dtype in ("float32", "float64"):
            model = build_model(name, input_shape=(4,), n_outputs=3, dtype=dtype)
            p = model.zeros()
            p[:] = rng.standard_normal(p.size)
            g = model.zeros()
            loss = model.loss_grad(p, X, y, g)
            assert np.isfinite(loss) and np.isfinite(g).all()
            z = X @ model.layout.view(p.astype(np.float64), "W") + model.layout.view(p.astype(np.float64), "b")
            ref = (np.mean(np.logaddexp(0, z) - y * z) if name == "logreg" else xent_ref(z, y))
            assert loss == pytest.approx(ref, rel=1e-4)


def test_gradient_descent_learns():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((32, 1, 8, 8))
    y = (X[:, 0, :4].sum(axis=(1, 2)) > X[:, 0, 4:].sum(axis=(1, 2))).astype(int)
    model = build_model("cnn", input_shape=(1, 8, 8), n_outputs=2, channels=(4, 4), l2=1e-4)
    p, g = model.zeros(), model.zeros()
    model.init(p, rng)
    first = model.loss_grad(p, X, y, g)
    for _ in range(60):
        model.loss_grad(p, X, y, g)
        p -= 0.1 * g
    assert model.loss(p, X, y) < 0.5 * first


def test_unknown_model_names_the_valid_ones():
    with pytest.raises(ValueError) as info:
        build_model("resnet", input_shape=(3,), n_outputs=2)
    msg = str(info.value)
    assert "resnet" in msg and all(name in msg for name in MODELS)
    assert set(MODELS) == {"ridge", "logreg", "softmax", "mlp", "cnn"}
