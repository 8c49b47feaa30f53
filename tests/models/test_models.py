"""Models: hand-written backward vs finite differences, forward vs naive
references, dtypes. The linear models' derivative split, capabilities,
buffer reuse, init and the registry are in test_models_interface.py."""
import numpy as np
import pytest

from mpidsgd.models import build_model
from model_cases import CASES, make, xent_ref

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
