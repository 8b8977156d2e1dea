"""rmsprop.integrations imports with torch alone: each framework loads only when a helper needs it."""

from __future__ import annotations

import subprocess
import sys

FRAMEWORKS = ("stable_baselines3", "gymnasium", "timm", "torchvision", "lightning", "pytorch_lightning",
              "transformers", "accelerate")

CHECK = f"""
import sys
for name in {FRAMEWORKS!r}:
    sys.modules[name] = None  # importing it now raises ImportError
import rmsprop, rmsprop.integrations
from rmsprop.integrations import *  # every submodule in __all__
from rmsprop.integrations import lightning, sb3, timm
print(sorted(rmsprop.integrations.__all__))
print(sb3.policy_kwargs("sb3")["optimizer_kwargs"])
for call in (timm.register, lambda: lightning.SkippedSteps, lambda: sb3.SkippedSteps):
    try:
        call()
    except ImportError as err:
        print("ImportError:", err)
"""


def test_integrations_import_without_any_framework_and_say_what_to_install():
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "['lightning', 'sb3', 'skipped_steps', 'timm']",
        "{'preset': 'sb3', 'eps': 1e-05}",
        "ImportError: rmsprop.integrations.timm needs timm: pip install timm",
        "ImportError: rmsprop.integrations.lightning.SkippedSteps needs Lightning: "
        "pip install lightning (or pytorch-lightning)",
        "ImportError: rmsprop.integrations.sb3.SkippedSteps needs Stable-Baselines3: "
        "pip install stable-baselines3",
    ]
