"""RMSProp for PyTorch, done properly.

- :class:`RMSprop`: a drop-in ``torch.optim.RMSprop`` with every major
  framework's semantics by name (``preset=``) or knob.
- :class:`RMSPropOptimizer`: the seed tutorial's class.
- :data:`PRESETS`: the frameworks' variants, as data.
- :func:`step_in_backward`: update each parameter inside backward, freeing
  its gradient at once.
- :mod:`rmsprop.functional`: the functional form.
- :func:`rmsprop.engine.rmsprop_update`: the one definition of the update.
"""

from . import functional
from .backward import step_in_backward
from .engine import rmsprop_update
from .groups import param_groups
from .optimizer import LAYOUT_VERSION, RMSprop
from .presets import PRESETS, Preset, translate
from .seed import RMSPropOptimizer

__all__ = [
    "LAYOUT_VERSION",
    "PRESETS",
    "Preset",
    "RMSPropOptimizer",
    "RMSprop",
    "functional",
    "param_groups",
    "rmsprop_update",
    "step_in_backward",
    "translate",
]
__version__ = "0.1.0"
