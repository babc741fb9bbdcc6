"""AiiDA node types of aiida-alml."""

from .configurations import ConfigurationSet, PartsError
from .model import MlipModel, ModelIntegrityError

__all__ = ('ConfigurationSet', 'MlipModel', 'ModelIntegrityError', 'PartsError')
