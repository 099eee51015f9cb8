"""The 12.5 Hz supervised speech tokenizer (Whisper encoder + VQ bottleneck): speech -> codes 0..16383.

Loads a `THUDM/glm-4-voice-tokenizer` folder as it is (config.json,
model.safetensors, preprocessor_config.json), in either key layout: the
released one (no prefix) or the ASR-training one (`model.encoder.` prefix plus
tensors inference ignores and training uses).

Speech -> 16 kHz Whisper log-mel -> causal convs (100 -> 50 frames/s) ->
block-causal transformer layers -> avg-pool x4 (12.5 frames/s) -> nearest
codebook row = code. Because every operation only looks back, or within its
own 4 s block, the codes of a finished block are final: `SpeechTokenizer.stream`
uses that to tokenize while audio is still arriving.

Modules: `config` (TokenizerConfig), `network` (the encoder), `checkpoint`
(reading both layouts), `offline` (SpeechTokenizer), `stream` (TokenizerStream).
"""

from .config import TokenizerConfig
from .network import WhisperVQEncoder
from .offline import PIECE_SAMPLES, SpeechTokenizer
from .stream import TokenizerStream

__all__ = ["PIECE_SAMPLES", "SpeechTokenizer", "TokenizerConfig", "TokenizerStream", "WhisperVQEncoder"]
