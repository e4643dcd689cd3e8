"""One optimiser per comparison: a search space's optimiser knobs are checked, when the search
config is made, against the optimiser the runs train with (tune/spaces.py)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit

ADAMW_LR = "  optim.lr: {type: float, low: 5.0e-4, high: 1.0e-2, log: true}\n"


def _space(tmp_path, text: str) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return str(path)


def _search(tmp_path, text: str, **train):
    from tune.config import load_search_config

    return load_search_config(None, {"space": _space(tmp_path, text),
                                     "workdir": str(tmp_path / "w"),
                                     **({"train": train} if train else {})})


def test_adamw_learning_rates_under_sgd_are_refused_naming_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"space.yaml: 'optim.lr' is a range for adamw, but the "
                                         r"runs train with sgd"):
        _search(tmp_path, f"optimizer: adamw\nparams:\n{ADAMW_LR}", **{"optim.name": "sgd"})
    # the same space under the optimiser it is for
    cfg = _search(tmp_path, f"optimizer: adamw\nparams:\n{ADAMW_LR}", **{"optim.name": "adamw"})
    assert cfg.search_space().optimizer == "adamw"


def test_a_space_must_say_which_optimiser_its_ranges_are_for(tmp_path):
    with pytest.raises(ValueError, match=r"'optim.lr' is searched, but the space does not say "
                                         r"which optimiser"):
        _search(tmp_path, f"params:\n{ADAMW_LR}")
    # knobs that mean the same under every optimiser need no declaration
    _search(tmp_path, "params:\n  optim.warmup_epochs: {type: int, low: 0, high: 1}\n")


def test_implausible_ranges_and_a_second_optimiser_are_refused(tmp_path):
    # the plausibility guard: AdamW's rates declared as SGD's
    with pytest.raises(ValueError, match=r"optim.lr = 0.0005 is not a plausible value for sgd"):
        _search(tmp_path, f"optimizer: sgd\nparams:\n{ADAMW_LR}", **{"optim.name": "sgd"})
    with pytest.raises(ValueError, match=r"'optim.momentum' has no meaning for adamw"):
        _search(tmp_path, "optimizer: adamw\nparams:\n  optim.momentum: {type: float, low: 0.8, "
                "high: 0.95}\n", **{"optim.name": "adamw"})
    # the fine-tunings cannot train with another optimiser than their pretraining
    with pytest.raises(ValueError, match=r"'optim.name' is fixed to 'adamw' for the "
                                         r"fine-tunings, but the runs .* train with 'sgd'"):
        _search(tmp_path, "params:\n  loss.dice_weight: {type: float, low: 0.2, high: 0.8}\n"
                "fixed:\n  optim.name: adamw\n", **{"optim.name": "sgd"})
    with pytest.raises(ValueError, match=r"'optim.name' is searched"):
        _search(tmp_path, "params:\n  optim.name: {type: categorical, choices: [sgd, adamw]}\n")


def test_the_shipped_spaces_fit_their_presets_recipes():
    from tune.config import load_search_config

    demo = load_search_config(None, {})
    assert demo.search_space().optimizer == demo.train_config().optim.name
    pre = demo.train_config(task="pretrain", target="inverted_faf")
    assert pre.optim.name == demo.train_config().optim.name  # one optimiser for both
    real = load_search_config(None, {"data": "/data/store.zarr"})
    assert real.search_space().optimizer == real.train_config().optim.name == "sgd"
