"""What the modules of the ops share: their options, checked once, passed on every call."""

from torch import nn

from cuproi import _validate
from cuproi._types import OutputSize


class OpModule(nn.Module):
    """Module form of an op: checks its options once, and calls it with them.

    A subclass names the attributes that hold its options (``_options``), in the order the op
    takes them after the features and the boxes, and calls the op with them in ``forward``,
    by its name in the op's module, as torchvision's modules do: ``torch.jit.script`` compiles
    that call and ``torch.fx`` makes it a leaf. This class checks the two options every op
    takes, ``output_size`` and ``spatial_scale``; the subclass's ``__init__`` checks the
    others. ``extra_repr`` shows them all, in that order.
    """

    _options = ("output_size", "spatial_scale")

    def __init__(self, output_size: OutputSize, spatial_scale: float) -> None:
        super().__init__()
        self.output_size = _validate.output_size(output_size)
        self.spatial_scale = _validate.spatial_scale(spatial_scale)

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={getattr(self, name)}" for name in self._options)
