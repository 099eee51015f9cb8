"""Speech decoder: 12.5 Hz speech ids -> mel (flow matching) -> 22.05 kHz audio (HiFT).

`SpeechDecoder.from_pretrained("THUDM/glm-4-voice-decoder")` loads the released
folder; `decode(ids)` works offline, `stream()` incrementally.
"""

from .model import SpeechDecoder, TokenError
from .streaming import DecoderStream, StreamOptions

__all__ = ["DecoderStream", "SpeechDecoder", "StreamOptions", "TokenError"]
