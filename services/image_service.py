"""The CNN alone: `bentoml serve services.image_service:ImageClassifier`."""
from services.base import platform_service
from services.image import ImageAPI


@platform_service("image-classifier")
class ImageClassifier(ImageAPI):
    """Fashion-MNIST CNN behind /classify_image and /classify_pixels."""
