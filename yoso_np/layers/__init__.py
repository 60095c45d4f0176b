"""The functional core: pure functions over arrays (NumPy or CuPy) and weight dicts keyed by checkpoint names.

Each forward returns (out, cache); its backward, beside it in the same file, takes (dout, cache)."""
from .activations import ACTIVATIONS, activation
from .attention import attention, collision_probability, depthwise_conv, expectation_cumulation, l2_normalize
from .dropout import dropout
from .embeddings import embeddings
from .encoder import encoder, encoder_layer
from .heads import classification_head, mlm_head, multiple_choice_head, qa_head, token_classification_head
from .linear import linear
from .losses import bce_with_logits, cross_entropy, mse
from .norm import layer_norm
from .params import add_prefix, sub
