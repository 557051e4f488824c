"""The Transformer alone: `bentoml serve services.text_service:TextClassifier`."""
from services.base import platform_service
from services.text import TextAPI


@platform_service("text-classifier")
class TextClassifier(TextAPI):
    """WordNet-gloss Transformer behind /classify_text and /classify_texts."""
