"""yoso_np: the YOSO transformer (Zeng et al., ICML 2021) in NumPy and CuPy, without torch."""
from .config import YosoConfig
from .models import (
    ModelOutput,
    YosoForMaskedLM,
    YosoForMultipleChoice,
    YosoForQuestionAnswering,
    YosoForSequenceClassification,
    YosoForTokenClassification,
    YosoModel,
)
from .pipelines import pipeline
from .tokenizer import Tokenizer

__version__ = "0.1.0"

__all__ = ["YosoConfig", "YosoModel", "YosoForMaskedLM", "YosoForSequenceClassification", "YosoForMultipleChoice",
           "YosoForTokenClassification", "YosoForQuestionAnswering", "ModelOutput", "Tokenizer", "pipeline"]
