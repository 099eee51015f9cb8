"""The speech-text LM (GLM-4-Voice-9B): checkpoint loading, text tokenizer, prompts, streaming generation."""

from .checkpoint import convert_lm, glm_config_from_chatglm, load_lm

__all__ = ["convert_lm", "glm_config_from_chatglm", "load_lm"]
