"""xwam: X-WAM, a unified 4D world action model (multi-view RGB-D video, states and actions)."""

from xwam.config import ModelConfig, SamplerConfig, XWAMConfig, get_preset

__version__ = "0.1.0"

__all__ = ["ModelConfig", "SamplerConfig", "XWAMConfig", "get_preset", "__version__"]
