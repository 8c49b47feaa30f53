"""Config parsing and validation: every bad input names its key."""
import pytest

from mpidsgd import config as C

from mpidsgd.catalog import load_config
from mpidsgd import config_ref as R


def test_defaults_validate_and_roundtrip(tmp_path):
    cfg = load_config(None, ["run.steps=5"])
    text = C.dumps(cfg)
    p = tmp_path / "c.toml"
    p.write_text(text)
    again = load_config(str(p))
    assert C.to_dict(again) == C.to_dict(cfg)


@pytest.mark.parametrize("override, key", [
    ("run.stepz=3", "run.stepz"),
    ("run.steps=-1", "run.steps"),
    ("run.steps='many'", "run.steps"),
    ("algo.name='nosuch'", "algo.name"),
    ("model.name='nosuch'", "model.name"),
    ("algo.lr=-0.1", "algo.lr"),
    ("algo.momentum=1.5", "algo.momentum"),
    ("data.batch_size=0", "data.batch_size"),
    ("comm.emulate.alpha=-1", "comm.emulate.alpha"),
    ("comm.emulate.bogus=1", "comm.emulate.bogus"),
    ("run.dtype='float16'", "run.dtype"),
    ("nosection.x=1", "nosection"),
    ("data.name='file'", "data.path"),
])
def test_invalid_values_name_the_key(override, key):
    with pytest.raises(C.ConfigError) as exc:
        load_config(None, ["run.steps=5", override])
    assert key in str(exc.value)


def test_set_parses_toml_literals_and_bare_words():
    d = C.parse_set(["model.hidden=[32, 16]", "algo.name=sgd", "run.epochs=1.5"])
    assert d == {"model": {"hidden": [32, 16]}, "algo": {"name": "sgd"}, "run": {"epochs": 1.5}}


def test_int_accepted_for_float():
    assert load_config(None, ["run.steps=5", "algo.lr=1"]).algo.lr == 1.0


def test_bool_rejected_for_int():
    with pytest.raises(C.ConfigError, match="run.steps"):
        load_config(None, ["run.steps=true"])


def test_missing_config_file(tmp_path):
    with pytest.raises(C.ConfigError, match="does not exist"):
        load_config(str(tmp_path / "none.toml"))


def test_malformed_config_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[run\nsteps=")
    with pytest.raises(C.ConfigError, match="not valid TOML"):
        load_config(str(bad))


def test_reference_lists_every_key():
    keys = {row[0] for row in R.reference()}
    for key in ("run.seed", "data.batch_size", "model.l2", "algo.lr", "comm.cuda_aware",
                "comm.emulate.alpha", "checkpoint.every"):
        assert key in keys


def test_docs_page_documents_every_key_with_its_default():
    """Every common key and every algorithm's own key appears in the tables
    of docs/configuration.md with the default the code uses (regenerate with
    `python -m mpidsgd.config --write docs/configuration.md`)."""
    import os
    import re
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    text = open(os.path.join(root, "docs", "configuration.md")).read()
    m = re.search(r"<!-- config:table -->\n(.*?)<!-- /config:table -->", text, re.S)
    assert m, "docs/configuration.md lacks the <!-- config:table --> block"
    assert m.group(1).strip() == R.markdown().strip(), \
        "config tables are stale: run python -m mpidsgd.config --write docs/configuration.md"
    for key, default, meaning in R.reference():
        assert f"| `{key}` | {R._md_value(default)} |" in m.group(1)
    for key, default, meaning, names in R.algorithm_reference():
        assert f"| `{key}` | {', '.join(names)} | {R._md_value(default)} |" in m.group(1)


@pytest.mark.parametrize("override", ["algo.lr=inf", "algo.lr=nan", "comm.emulate.alpha=-inf",
                                      "model.l2=nan", "algo.density=nan", "run.epochs=inf"])
def test_non_finite_floats_are_refused_by_name(override):
    key = override.split("=")[0]
    sets = ["run.steps=5", override] + (["algo.name=spardl"] if "density" in key else [])
    with pytest.raises(C.ConfigError) as exc:
        load_config(None, sets)
    msg = str(exc.value)
    assert msg.startswith(f"{key} must be a finite number"), msg
    assert ">=" not in msg and "(" not in msg                # no range claim about a NaN


def test_no_step_budget_names_both_keys_once():
    with pytest.raises(C.ConfigError) as exc:
        load_config(None, ["run.epochs=0"])
    msg = str(exc.value)
    assert msg.startswith("run.steps and run.epochs are both 0: set run.steps")
    assert msg.count("run.steps") == 2 and msg.count("run.epochs") == 2


def test_long_values_are_quoted_at_most_80_characters():
    with pytest.raises(C.ConfigError) as exc:
        load_config(None, ["run.steps=5", "run.dtype=" + "[" + ",".join(["1"] * 400) + "]"])
    assert "run.dtype must be a string" in str(exc.value) and len(str(exc.value)) < 130


def test_a_config_file_that_sets_nothing_is_the_quickstart(tmp_path):
    from mpidsgd.defaults import QUICKSTART, load_cli
    (tmp_path / "empty.toml").write_text("# nothing set\n")
    cfg, notes = load_cli(str(tmp_path / "empty.toml"))
    quick, _ = load_cli(None)
    assert C.to_dict(cfg) == C.to_dict(quick) and notes == []
    assert cfg.run.epochs == QUICKSTART["run"]["epochs"] and cfg.algo.name == "spardl"
    # the reference (docs/configuration.md, python -m mpidsgd.config) shows these values
    rows = {key: default for key, default, _ in R.reference()}
    assert rows["run.out_dir"] == cfg.run.out_dir and rows["algo.momentum"] == cfg.algo.momentum
    assert rows["model.hidden"] == cfg.model.hidden and rows["run.epochs"] == cfg.run.epochs


@pytest.mark.parametrize("algo", ["centralvr", "saga", "svrg"])
def test_vr_family_drops_only_the_quickstart_momentum(tmp_path, algo):
    from mpidsgd.defaults import load_cli
    cfg, notes = load_cli(None, [f"algo.name={algo}"])
    assert cfg.algo.momentum == 0.0
    assert len(notes) == 1 and algo in notes[0] and "algo.momentum = 0.9" in notes[0]
    with pytest.raises(C.ConfigError, match="algo.momentum"):
        load_cli(None, [f"algo.name={algo}", "algo.momentum=0.9"])
    (tmp_path / "job.toml").write_text(f'[algo]\nname = "{algo}"\nmomentum = 0.5\n')
    with pytest.raises(C.ConfigError, match="algo.momentum"):
        load_cli(str(tmp_path / "job.toml"))
    cfg, notes = load_cli(None, ["algo.name=sgd"])            # others keep it, silently
    assert cfg.algo.momentum == 0.9 and notes == []


def test_label_column_is_an_index_or_a_name():
    assert load_config(None, ["run.steps=5", "data.label_column=target"]).data.label_column == "target"
    assert load_config(None, ["run.steps=5", "data.label_column=0"]).data.label_column == 0
    for bad in ("true", "1.5", "''"):
        with pytest.raises(C.ConfigError, match="data.label_column"):
            load_config(None, ["run.steps=5", f"data.label_column={bad}"])


def test_config_check_flags_a_stale_page(tmp_path):
    """--check exits 1 on a page whose tables differ from the code, 0 after --write."""
    page = tmp_path / "configuration.md"
    page.write_text("intro\n<!-- config:table -->\n| stale |\n<!-- /config:table -->\n")
    assert R.main(["--check", str(page)]) == 1
    assert R.main(["--write", str(page)]) == 0
    assert R.main(["--check", str(page)]) == 0
    assert page.read_text().startswith("intro\n")


def test_model_loss_mse_is_an_mlp_or_torch_option():
    assert load_config(None, ["run.steps=5", "model.loss=mse"]).model.loss == "mse"
    with pytest.raises(C.ConfigError, match="model.loss = mse needs model.name = mlp or torch"):
        load_config(None, ["run.steps=5", "model.loss=mse", "model.name=softmax"])
    with pytest.raises(C.ConfigError, match="model.loss must be cross_entropy or mse"):
        load_config(None, ["run.steps=5", "model.loss=hinge"])
