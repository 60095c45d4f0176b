"""The functional core: pure functions over arrays (NumPy or CuPy) and weight dicts keyed by checkpoint names.

Each forward returns (out, cache); its backward, beside it in the same file, takes (dout, cache) and returns the
input gradient (and, for layers with weights, the weight gradients keyed like the weight dict)."""
from .activations import ACTIVATIONS, activation, activation_backward
from .attention import (attention, attention_backward, collision_probability, depthwise_conv, expectation_cumulation,
                        expectation_cumulation_backward, l2_normalize)
from .dropout import dropout, dropout_backward
from .embeddings import embeddings, embeddings_backward
from .encoder import encoder, encoder_backward, encoder_layer, encoder_layer_backward
from .heads import (classification_head, classification_head_backward, mlm_head, mlm_head_backward,
                    multiple_choice_head, multiple_choice_head_backward, qa_head, qa_head_backward,
                    token_classification_head, token_classification_head_backward)
from .linear import linear, linear_backward
from .losses import (bce_with_logits, bce_with_logits_backward, cross_entropy, cross_entropy_backward, mse,
                     mse_backward)
from .norm import layer_norm, layer_norm_backward
from .params import add_prefix, sub

__all__ = [
    "ACTIVATIONS", "activation", "activation_backward", "attention", "attention_backward", "collision_probability",
    "depthwise_conv", "expectation_cumulation", "expectation_cumulation_backward", "l2_normalize", "dropout",
    "dropout_backward", "embeddings", "embeddings_backward", "encoder", "encoder_backward", "encoder_layer",
    "encoder_layer_backward", "classification_head", "classification_head_backward", "mlm_head", "mlm_head_backward",
    "multiple_choice_head", "multiple_choice_head_backward", "qa_head", "qa_head_backward",
    "token_classification_head", "token_classification_head_backward", "linear", "linear_backward",
    "bce_with_logits", "bce_with_logits_backward", "cross_entropy", "cross_entropy_backward", "mse", "mse_backward",
    "layer_norm", "layer_norm_backward", "add_prefix", "sub",
]
