"""The integration tests' shared set-up: a stand-in for torchvision, and one torch thread.

Run with `make integration` (the .integration-venv of scripts/integration-requirements.txt).

torchvision's wheels are built against one exact torch and do not import beside this
project's torch CPU wheel, so the environment does not install it. timm, though, imports
it at `import timm`: its data package (transforms, dataset factory) and its norm layers
name a few torchvision objects at import time. None of them is used by what these tests
run (timm's models on tensors and its optimizer factory), so a stand-in module tree is
enough: it holds exactly the names `import timm` reads, as placeholder classes that
raise if anything tries to use them, and `InterpolationMode`, the enum of interpolation
names that timm maps to its own strings and uses as default arguments.
"""

from __future__ import annotations

import enum
import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent

# What `import timm` (1.0.31) reads from torchvision, module by module.
_TORCHVISION_NAMES = {
    "torchvision": [],
    "torchvision.transforms": ["ToTensor"],  # timm.data.transforms subclasses it
    "torchvision.transforms.functional": [],  # + InterpolationMode, below
    "torchvision.ops": [],
    "torchvision.ops.misc": ["FrozenBatchNorm2d"],  # timm.layers: isinstance checks and freezing
    "torchvision.datasets": [  # timm.data.dataset_factory imports these by name
        "CIFAR10", "CIFAR100", "FashionMNIST", "ImageFolder", "KMNIST", "MNIST",
    ],
}


def _placeholder(module: str, name: str) -> type:
    def refuse(*args, **kwargs):
        raise RuntimeError(f"{module}.{name} is a stand-in (integration/conftest.py): no torchvision here")

    return type(name, (), {"__init__": refuse, "__module__": module})


def import_timm_with_torchvision_stub() -> None:
    """Import timm with the stand-in modules in sys.modules, then take them out again.

    timm keeps what it imported; everything else (torchmetrics, which Lightning imports,
    asks ``find_spec("torchvision")`` to decide what to load) sees no torchvision at all,
    as on this machine. Nothing happens where timm is missing or a real torchvision imports.
    """
    if importlib.util.find_spec("timm") is None or importlib.util.find_spec("torchvision") is not None:
        return
    for name, attributes in _TORCHVISION_NAMES.items():
        module = types.ModuleType(name, "stand-in for torchvision (integration/conftest.py)")
        module.__path__ = []  # a package, so its submodules resolve from sys.modules
        for attribute in attributes:
            setattr(module, attribute, _placeholder(name, attribute))
        sys.modules[name] = module
        if name == "torchvision.transforms.functional":
            modes = ("NEAREST", "BILINEAR", "BICUBIC", "BOX", "HAMMING", "LANCZOS")
            module.InterpolationMode = enum.Enum("InterpolationMode", {m: m.lower() for m in modes})
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)
    try:
        import timm.optim  # noqa: F401
    finally:
        for name in _TORCHVISION_NAMES:
            del sys.modules[name]


import_timm_with_torchvision_stub()


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread (the machine is shared), restored after each test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
