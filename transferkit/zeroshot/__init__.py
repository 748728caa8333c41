"""Text to image: classes described in words (DeViSE bridge, CLIP), zero-shot and name priors."""

from .bridge import BridgeConfig, LinearBridge, fit_bridge, hinge_rank_loss, load_bridge, save_bridge, softmax_loss
from .classtext import read_class_text
from .prior import fit_prior_scale, head_prior, set_head_from_prior, zero_shot_probs
from .space import JointSpace, load_space, text_embedder

__all__ = ["BridgeConfig", "LinearBridge", "fit_bridge", "hinge_rank_loss", "load_bridge", "save_bridge",
           "softmax_loss", "read_class_text", "fit_prior_scale", "head_prior", "set_head_from_prior",
           "zero_shot_probs", "JointSpace", "load_space", "text_embedder"]
