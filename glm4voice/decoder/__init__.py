"""Speech decoder: 12.5 Hz speech codes -> mel (flow matching) -> 22.05 kHz audio (HiFT).

`SpeechDecoder.from_pretrained("THUDM/glm-4-voice-decoder")` loads the released
folder; `decode(codes)` works offline, `stream()` incrementally.
"""

from .model import CodeError, SpeechDecoder
from .streaming import DecoderStream, StreamOptions

__all__ = ["CodeError", "DecoderStream", "SpeechDecoder", "StreamOptions"]
