"""Models: hand-written backward vs finite differences, forward vs naive references,
dtypes, the linear models' derivative split, buffer reuse and the registry."""
import numpy as np
import pytest

from mpidsgd.models import MODELS, build_model

# (name, input_shape, n_outputs, architecture keywords)
CASES = {
    "ridge": ("ridge", (5,), 1, {}),
    "logreg": ("logreg", (5,), 1, {}),
    "softmax": ("softmax", (5,), 3, {}),
    "softmax-image": ("softmax", (2, 3), 4, {}),
    "mlp": ("mlp", (2, 3), 3, {"hidden": (5, 4)}),
    "mlp-nohidden": ("mlp", (4,), 3, {"hidden": ()}),
    "mlp-mse": ("mlp", (2, 3), 1, {"hidden": (5, 4), "loss": "mse"}),
    "cnn": ("cnn", (2, 7, 9), 3, {"channels": (3, 4), "kernel": 3}),
    "cnn-k2-1block": ("cnn", (1, 6, 5), 2, {"channels": (2,), "kernel": 2}),
    "cnn-k5-3blocks": ("cnn", (3, 9, 8), 3, {"channels": (2, 3, 2), "kernel": 5}),
}
LINEAR = ["ridge", "logreg", "softmax", "softmax-image"]


def make(case, l2=1e-3, dtype="float64", seed=0, batch=6):
    """Model, random params (biases nonzero), a batch X, y."""
    name, ishape, n_out, arch = CASES[case]
    model = build_model(name, input_shape=ishape, n_outputs=n_out, l2=l2, dtype=dtype, **arch)
    rng = np.random.default_rng(seed)
    params = model.zeros()
    model.init(params, rng)
    params += (0.3 * rng.standard_normal(params.size)).astype(dtype)
    X = rng.standard_normal((batch,) + ishape)
    if model.task == "regression":
        y = rng.standard_normal(batch)
    else:
        y = rng.integers(0, 2 if name == "logreg" else n_out, batch)
    return model, params, X, y


def finite_diff(model, params, X, y, eps=1e-6):
    g = np.empty_like(params)
    for i in range(params.size):
        q = params.copy()
        q[i] += eps
        up = model.loss(q, X, y)
        q[i] -= 2 * eps
        g[i] = (up - model.loss(q, X, y)) / (2 * eps)
    return g


@pytest.mark.parametrize("case", list(CASES))
def test_backward_matches_central_differences(case):
    model, params, X, y = make(case, l2=1e-3)
    grad = np.full(params.size, np.nan)
    loss = model.loss_grad(params, X, y, grad)
    assert loss == pytest.approx(model.loss(params, X, y), rel=1e-14)
    fd = finite_diff(model, params, X, y)
    # per named block, so a wrong bias or one conv layer cannot hide behind a big weight
    for name in model.layout.names():
        sl = model.layout.slice(name)
        scale = np.linalg.norm(fd[sl])
        assert scale > 1e-6, f"{case}/{name}: gradient vanishes, test would be vacuous"
        err = np.linalg.norm(grad[sl] - fd[sl]) / scale
        assert err < 1e-6, f"{case}/{name}: relative error {err:.2e}"


@pytest.mark.parametrize("case", list(CASES))
def test_l2_enters_loss_and_gradient(case):
    model, params, X, y = make(case, l2=0.37)
    plain = build_model(model.name, input_shape=model.input_shape, n_outputs=model.n_outputs,
                        l2=0.0, dtype="float64", **CASES[case][3])
    g, g0 = model.zeros(), plain.zeros()
    loss, loss0 = model.loss_grad(params, X, y, g), plain.loss_grad(params, X, y, g0)
    assert loss - loss0 == pytest.approx(0.5 * 0.37 * params @ params, rel=1e-12)
    np.testing.assert_allclose(g - g0, 0.37 * params, rtol=1e-12, atol=1e-14)


# -- forward passes against naive references --------------------------------

def log_softmax_ref(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def xent_ref(logits, y):
    return -log_softmax_ref(logits)[np.arange(len(y)), y].mean()


def cnn_logits_ref(model, params, X):
    """Textbook loops: 'same' cross-correlation, ReLU, then 2x2 floor max-pool."""
    v, k = model.layout.views(params), model.kernel
    lo = (k - 1) // 2
    x = X
    for i in range(len(model.channels)):
        W, b = v[f"conv{i}.W"], v[f"conv{i}.b"]
        B, _, H, Wd = x.shape
        xpad = np.pad(x, ((0, 0), (0, 0), (lo, k - 1 - lo), (lo, k - 1 - lo)))
        z = np.empty((B, W.shape[0], H, Wd))
        for r in range(H):
            for c in range(Wd):
                z[:, :, r, c] = np.einsum("bcij,ocij->bo", xpad[:, :, r:r + k, c:c + k], W) + b
        a = np.maximum(z, 0)
        h2, w2 = H // 2, Wd // 2
        x = a[:, :, :2 * h2, :2 * w2].reshape(B, -1, h2, 2, w2, 2).max(axis=(3, 5))
    return x.reshape(len(X), -1) @ v["fc.W"] + v["fc.b"]


def mlp_logits_ref(model, params, X):
    v, a = model.layout.views(params), X.reshape(len(X), -1)
    n = len(model.hidden)
    for i in range(n + 1):
        a = a @ v[f"W{i}"] + v[f"b{i}"]
        if i < n:
            a = np.maximum(a, 0)
    return a


@pytest.mark.parametrize("case", list(CASES))
def test_forward_matches_reference(case):
    model, params, X, y = make(case, l2=0.0, batch=5)
    v, Xf = model.layout.views(params), X.reshape(len(X), -1)
    if model.name in ("ridge", "logreg"):
        z = Xf @ v["W"] + v["b"]
        ref = (0.5 * np.mean((z - y) ** 2) if model.name == "ridge"
               else np.mean(np.log1p(np.exp(z)) - y * z))
        pred_ref = z if model.name == "ridge" else (z > 0).astype(int)
    else:
        logits = {"softmax": lambda: Xf @ v["W"] + v["b"],
                  "mlp": lambda: mlp_logits_ref(model, params, X),
                  "cnn": lambda: cnn_logits_ref(model, params, X)}[model.name]()
        if model.task == "regression":         # mlp with loss = mse: one output
            ref, pred_ref = 0.5 * np.mean((logits[:, 0] - y) ** 2), logits[:, 0]
        else:
            ref, pred_ref = xent_ref(logits, y), logits.argmax(axis=1)
    assert model.loss(params, X, y) == pytest.approx(ref, rel=1e-12)
    np.testing.assert_allclose(model.predict(params, X), pred_ref, rtol=1e-12)


def test_cnn_pool_ties_get_the_gradient_once():
    """Blank images make every 2x2 window an exact tie (z = bias). Shifting a conv
    bias moves all tied values together, so the loss stays differentiable along
    it: routing to all tied elements instead of one would multiply these."""
    model, params, X, y = make("cnn", batch=6)
    X[:4] = 0.0
    for i in range(2):
        model.layout.view(params, f"conv{i}.b")[:] = 0.5 + np.arange(model.channels[i])
    grad = model.zeros()
    model.loss_grad(params, X, y, grad)
    fd = finite_diff(model, params, X, y)
    for i in range(2):
        sl = model.layout.slice(f"conv{i}.b")
        np.testing.assert_allclose(grad[sl], fd[sl], rtol=1e-6)


def test_cnn_accepts_flat_rows():
    model, params, X, y = make("cnn")
    assert model.loss(params, X.reshape(len(X), -1), y) == model.loss(params, X, y)


def test_cnn_refuses_an_input_shape_that_is_not_a_large_enough_image():
    with pytest.raises(ValueError, match="cnn"):
        build_model("cnn", input_shape=(12,), n_outputs=3)
    with pytest.raises(ValueError, match="too small"):
        build_model("cnn", input_shape=(1, 3, 8), n_outputs=3)


def test_cnn_refuses_a_batch_of_another_shape():
    model, params, X, y = make("cnn")
    with pytest.raises(ValueError, match="input"):
        model.loss(params, X[:, :, :-1], y)


# -- dtypes --------------------------------------------------------------------

def float32_and_64(case):
    """A float32 model's loss and gradient on float64 inputs, and the float64
    model's at the same params: (m32, p32, X, y, g32, loss32, g64, loss64)."""
    m32, p32, X, y = make(case, l2=1e-2, dtype="float32")
    m64 = build_model(m32.name, input_shape=m32.input_shape, n_outputs=m32.n_outputs,
                      l2=1e-2, dtype="float64", **CASES[case][3])
    g32, g64 = m32.zeros(), m64.zeros()
    loss32 = m32.loss_grad(p32, X, y, g32)
    loss64 = m64.loss_grad(p32.astype(np.float64), X, y, g64)
    return m32, p32, X, y, g32, loss32, g64, loss64


@pytest.mark.parametrize("case", list(CASES))
def test_float32_gradient_stays_float32_on_float64_inputs(case):
    # float64 inputs are converted, never the params or gradient upcast
    m32, p32, X, y, g32, loss32, _, _ = float32_and_64(case)
    assert m32.zeros().dtype == np.float32
    assert g32.dtype == np.float32 and isinstance(loss32, float)


@pytest.mark.parametrize("case", list(CASES))
def test_float32_loss_and_gradient_match_float64(case):
    _, _, _, _, g32, loss32, g64, loss64 = float32_and_64(case)
    assert loss32 == pytest.approx(loss64, rel=1e-5)
    np.testing.assert_allclose(g32, g64, rtol=1e-4, atol=1e-5 * np.abs(g64).max())


@pytest.mark.parametrize("case", list(CASES))
def test_float32_inputs_give_the_loss_of_float64_inputs(case):
    m32, p32, X, y, g32, loss32, _, _ = float32_and_64(case)
    assert m32.loss_grad(p32, X.astype(np.float32), y, g32) == pytest.approx(loss32, rel=1e-6)


REGRESSION = [c for c in CASES if make(c)[0].task == "regression"]


@pytest.mark.parametrize("case", REGRESSION)
def test_float32_regression_predicts_float32(case):
    m32, p32, X, _, _, _, _, _ = float32_and_64(case)
    assert m32.predict(p32, X).dtype == np.float32


@pytest.mark.parametrize("case", list(CASES))
def test_float32_model_refuses_a_float64_gradient_buffer(case):
    m32, p32, X, y, _, _, g64, _ = float32_and_64(case)
    with pytest.raises(ValueError, match="grad"):
        m32.loss_grad(p32, X, y, g64)


def test_invalid_arguments_are_rejected():
    with pytest.raises(ValueError, match="dtype"):
        build_model("mlp", input_shape=(3,), n_outputs=2, dtype="float16")
    with pytest.raises(ValueError, match="l2"):
        build_model("ridge", input_shape=(3,), n_outputs=1, l2=-1.0)
    with pytest.raises(ValueError, match="hidden"):
        build_model("mlp", input_shape=(3,), n_outputs=2, hidden=(4, 0))
    with pytest.raises(ValueError, match="n_outputs"):
        build_model("softmax", input_shape=(3,), n_outputs=1)


def test_float_coded_labels_are_accepted():
    model, params, X, y = make("mlp")
    assert model.loss(params, X, y.astype(np.float64)) == model.loss(params, X, y)


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
