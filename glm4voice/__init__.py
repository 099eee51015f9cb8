"""glm4voice: an independent implementation of GLM-4-Voice.

Parts: ``audio`` (I/O and mel features), ``tokenizer`` (speech -> 12.5 Hz codes),
``decoder`` (codes -> 22.05 kHz speech), ``lm`` (speech-text LM), ``chat``.
"""

__version__ = "0.1.0"
