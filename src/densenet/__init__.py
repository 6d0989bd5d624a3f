"""DenseNet with the tutorial's math made explicit, torchvision-compatible weights and a complete tool."""

__version__ = "0.1.0"

from densenet.config import DenseNetConfig
from densenet.model import DenseNet
from densenet.optimize import optimize_for_inference
from densenet.variants import create_model, get_config, list_models, register_model
from densenet.weights import from_pretrained, load_weights, save_pretrained

__all__ = [
    "DenseNet",
    "DenseNetConfig",
    "create_model",
    "from_pretrained",
    "get_config",
    "list_models",
    "load_weights",
    "optimize_for_inference",
    "register_model",
    "save_pretrained",
]
