"""The one streaming contract every incremental stage follows.

    out = stream.push(piece)   # what became final with this piece (possibly empty)
    out = stream.flush()       # everything still held back: the utterance is over

The rule for `flush`: it returns all pending output and ends the current
utterance; the stream is then as good as new (same settings, fresh state),
so the next `push` starts an independent utterance. Nothing pushed is ever
lost, and nothing from one utterance leaks into the next.

Streams: `audio.StreamResampler` (audio -> audio at another rate),
`tokenizer.TokenizerStream` (16 kHz audio -> speech codes),
`lm.text.TextDecoder` (LM ids -> text, UTF-8 safe), `decoder.DecoderStream`
(speech codes -> 22.05 kHz audio) and the vocoder under it,
`decoder.hift.VocoderStream` (mel -> audio). Each keeps its state in one
dataclass (`stream.state`), so "as good as new" is one assignment.
"""

from __future__ import annotations

from typing import Protocol, TypeVar, runtime_checkable

In = TypeVar("In", contravariant=True)
Out = TypeVar("Out", covariant=True)


@runtime_checkable
class Stream(Protocol[In, Out]):
    def push(self, piece: In, /) -> Out:
        """Add input; return the output that is final now."""
        ...

    def flush(self) -> Out:
        """Return everything still pending, end the utterance, start anew."""
        ...
