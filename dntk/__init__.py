"""dntk: the Distilled Neural Tangent Kernel, reproduced."""
__version__ = "0.1.0"
