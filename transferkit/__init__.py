"""transferkit: transfer learning from pretrained models, as a library and a CLI."""

__version__ = "0.1.0"

from .models import Backbone, TransferModel, attach_head, load_backbone  # noqa: E402

__all__ = ["Backbone", "TransferModel", "attach_head", "load_backbone", "__version__"]
