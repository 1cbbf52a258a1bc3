"""A user's reparametrized weights made plain before slimtune compresses the model.

Weight normalization (``torch.nn.utils.parametrizations.weight_norm`` or the older
``torch.nn.utils.weight_norm``), spectral normalization and any other ``torch.nn.utils.
parametrize`` parametrization compute a layer's weight from other tensors at every forward. A
deployed model has the weight itself, and compressing needs it: pruning masks and fake
quantization are slimtune's own parametrizations of ``weight``, torch-pruning cuts a
``weight`` parameter, and the ONNX quantizers look for it as an initializer. So the weight a
parametrization gives is computed once and stored as a plain parameter (the same values: the
forward computed them the same way).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torch.nn.utils import parametrize, remove_spectral_norm, remove_weight_norm

_REMOVE: dict[str, Callable[[nn.Module, str], nn.Module]] = {
    "WeightNorm": remove_weight_norm,
    "SpectralNorm": remove_spectral_norm,
}


def plain_weights(model: nn.Module) -> list[str]:
    """Store every parametrized tensor of ``model`` as the plain parameter its parametrization
    gives, in place; returns the names made plain (``layer.weight``)."""
    made: list[str] = []
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for tensor in list(module.parametrizations.keys()):  # type: ignore[union-attr]
                parametrize.remove_parametrizations(module, tensor, leave_parametrized=True)
                made.append(f"{name}.{tensor}" if name else tensor)
        for hook in list(module._forward_pre_hooks.values()):  # the older hook-based forms
            remove = _REMOVE.get(type(hook).__name__)
            tensor = getattr(hook, "name", None)
            if remove is not None and isinstance(tensor, str):
                remove(module, tensor)  # computes the weight and stores it as a parameter
                made.append(f"{name}.{tensor}" if name else tensor)
    return made
