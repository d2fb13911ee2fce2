"""anechat: chat with LLMs on the Apple Neural Engine, and run the same Core ML chunks anywhere."""

__version__ = "0.1.0"
