"""Config parsing and validation: every bad input names its key."""
import pytest

from mpidsgd import config as C
from mpidsgd import config_ref as R


def test_defaults_validate_and_roundtrip(tmp_path):
    cfg = C.load(None, ["run.steps=5"])
    text = C.dumps(cfg)
    p = tmp_path / "c.toml"
    p.write_text(text)
    again = C.load(str(p))
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
        C.load(None, ["run.steps=5", override])
    assert key in str(exc.value)


def test_set_parses_toml_literals_and_bare_words():
    d = C.parse_set(["model.hidden=[32, 16]", "algo.name=sgd", "run.epochs=1.5"])
    assert d == {"model": {"hidden": [32, 16]}, "algo": {"name": "sgd"}, "run": {"epochs": 1.5}}


def test_int_accepted_for_float_but_bool_rejected_for_int():
    assert C.load(None, ["run.steps=5", "algo.lr=1"]).algo.lr == 1.0
    with pytest.raises(C.ConfigError, match="run.steps"):
        C.load(None, ["run.steps=true"])


def test_missing_and_malformed_config_file(tmp_path):
    with pytest.raises(C.ConfigError, match="does not exist"):
        C.load(str(tmp_path / "none.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("[run\nsteps=")
    with pytest.raises(C.ConfigError, match="not valid TOML"):
        C.load(str(bad))


def test_reference_lists_every_key():
    keys = {row[0] for row in R.reference()}
    for key in ("run.seed", "data.batch_size", "model.l2", "algo.lr", "comm.cuda_aware",
                "comm.emulate.alpha", "checkpoint.every"):
        assert key in keys


def test_readme_documents_every_key_with_its_default():
    """Every common key and every algorithm's own key appears in the README's
    configuration tables with the default the code uses (regenerate with
    `python -m mpidsgd.config --readme README.md`)."""
    import os
    import re
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    text = open(os.path.join(root, "README.md")).read()
    m = re.search(r"<!-- config:table -->\n(.*?)<!-- /config:table -->", text, re.S)
    assert m, "README.md lacks the <!-- config:table --> block"
    assert m.group(1).strip() == R.markdown().strip(), \
        "README config tables are stale: run python -m mpidsgd.config --readme README.md"
    for key, default, meaning in R.reference():
        assert f"| `{key}` | {R._md_value(default)} |" in m.group(1)
    for key, default, meaning, names in R.algorithm_reference():
        assert f"| `{key}` | {', '.join(names)} | {R._md_value(default)} |" in m.group(1)
