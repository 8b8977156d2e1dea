"""The one table of group settings: every consumer reads it (rmsprop.settings)."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

import rmsprop
from rmsprop import settings
from rmsprop.engine import OP_ORDERS, Hyper
from rmsprop.paths import fused
from rmsprop.presets import KNOBS, PRESETS, Preset, translate

NAMES = settings.names()
RECORDS = settings.by_role("label", "bookkeeping")


def test_every_row_is_one_name_with_a_known_role_and_a_default_its_check_accepts():
    assert len(set(NAMES)) == len(NAMES)
    roles = {"runtime", "structure", "initial", "storage", "path", "label", "bookkeeping"}
    assert {s.role for s in settings.SETTINGS} <= roles
    torch_knobs = PRESETS["torch"].knobs()
    for s in settings.SETTINGS:
        default = torch_knobs[s.name] if s.default is settings.FROM_PRESET else s.default
        assert s.check(s.name, default) is None, s.name


def test_the_engine_reads_exactly_the_runtime_and_structure_rows():
    assert set(Hyper._fields) == set(settings.by_role("runtime", "structure"))


def test_the_fused_compile_key_tells_every_structure_row_apart():
    """The fused path's compiled code is looked up by the call's non-tensor
    arguments, the Hyper among them: a switch that selects formula lines
    changes the key, a number passed as a tensor does not."""
    opt = rmsprop.RMSprop([torch.zeros(1)], lr=0.01, momentum=0.5, agc_clip=0.1, ema_decay=0.9)
    hyper = settings.hyper_from(opt.param_groups[0])
    cpu = torch.device("cpu")

    def key(h: Hyper) -> tuple:
        return fused._key((fused._runtime_hyper(h, cpu),))[1]

    for name in settings.by_role("structure"):
        value = getattr(hyper, name)
        other = {"op_order": next(o for o in OP_ORDERS if o != value)}.get(name, not value) \
            if isinstance(value, (bool, str)) else value + 1
        assert key(hyper._replace(**{name: other})) != key(hyper), name
    for name in settings.by_role("runtime"):
        assert key(hyper._replace(**{name: getattr(hyper, name) / 2})) == key(hyper), name


def test_presets_fill_exactly_the_rows_whose_default_is_the_presets():
    records = ("name", "source", "argument_names")
    fields = [f.name for f in dataclasses.fields(Preset) if f.name not in records]
    rows = tuple(s.name for s in settings.SETTINGS if s.default is settings.FROM_PRESET)
    assert tuple(fields) == KNOBS == rows


def test_the_constructor_takes_every_setting_a_user_may_pass_and_a_group_holds_every_row():
    parameters = inspect.signature(rmsprop.RMSprop.__init__).parameters
    assert set(NAMES) - set(RECORDS) <= set(parameters)
    group = rmsprop.RMSprop([torch.nn.Parameter(torch.zeros(2))]).param_groups[0]
    assert set(NAMES) <= set(group)


def test_a_saved_group_lacking_a_row_keeps_the_loaders_value_and_only_lr_is_required():
    """Every row but lr may be missing from a file: a setting keeps the loading optimizer's
    value, a record reads as a foreign layout (layout_version 0, upgraded) with no skips."""
    assert set(settings.saved_defaults()) == set(NAMES) - {"lr"}
    p = torch.nn.Parameter(torch.zeros(2))
    opt = rmsprop.RMSprop([p], preset="tf1", lr=0.1, momentum=0.5, state_precision="fp32")
    opt.param_groups[0]["skipped_steps"] = 3
    built = dict(opt.param_groups[0])
    opt.load_state_dict({"state": {}, "param_groups": [{"params": [0], "lr": 0.2}]})
    from_file = {"lr": 0.2, "skipped_steps": 0, "layout_version": rmsprop.LAYOUT_VERSION}
    for name in NAMES:
        expected = from_file.get(name, built[name])
        assert opt.param_groups[0][name] == expected, name
    with pytest.raises(ValueError, match="lacks the setting 'lr'"):
        opt.load_state_dict({"state": {}, "param_groups": [{"params": [0]}]})


def test_translate_and_strict_read_the_table():
    for name in set(NAMES) - set(RECORDS) - {"preset"}:
        assert name in translate("torch", **{name: None})
    assert set(settings.STRICT) == {s.name for s in settings.SETTINGS if s.strict}
    assert "lr" not in settings.STRICT and "capturable" in settings.STRICT


@pytest.mark.parametrize("name", [n for n in NAMES if n not in ("preset",)])
def test_every_row_is_validated_at_a_step(name):
    """A hostile value in any row of a group is refused at the next step."""
    p = torch.nn.Parameter(torch.zeros(2))
    opt = rmsprop.RMSprop([p])
    p.grad = torch.ones(2)
    opt.step()
    opt.param_groups[0][name] = object()
    with pytest.raises((ValueError, TypeError), match="param group 0"):
        opt.step()
    assert float(opt.state[p]["step"]) == 1
