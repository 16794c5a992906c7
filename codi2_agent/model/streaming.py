"""Token ids -> text pieces for streaming, joined exactly as the whole answer decodes.

The text of an answer is `CoDi2Processor.decode(ids)`: special tokens skipped, surrounding
whitespace stripped. Decoding one token at a time does not give that (a byte-level BPE token may
hold half a UTF-8 character), so `TextPieceDecoder` decodes the ids so far after each token and
emits only what can no longer change.

Example:
    >>> from codi2_agent.model.processing_codi2 import CoDi2Processor, build_tokenizer
    >>> processor = CoDi2Processor(build_tokenizer())
    >>> ids = processor.tokenizer("a red star", add_special_tokens=False).input_ids
    >>> pieces = TextPieceDecoder(processor.decode)
    >>> streamed = [pieces.push(i) for i in ids] + [pieces.finish()]
    >>> "".join(streamed) == processor.decode(ids)
    True
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

__all__ = ["TextPieceDecoder"]

logger = logging.getLogger(__name__)

# What byte-level decoding shows for a UTF-8 character whose last bytes have not come yet.
INCOMPLETE_CHARACTER = "\ufffd"


class TextPieceDecoder:
    """Feed token ids one at a time; get the new text each one settles.

    A trailing incomplete character is held back until its last byte (or `finish`) comes. Trailing
    whitespace needs no care: `decode` strips it, so it is emitted only once text follows it.

    Args:
        decode: ids -> text, the same function that decodes the whole answer.
    """

    def __init__(self, decode: Callable[[Sequence[int]], str]) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._sent = ""

    @property
    def text(self) -> str:
        """The text emitted so far."""
        return self._sent

    def push(self, token_id: int) -> str:
        """Add one token; returns the text it settles ("" when nothing is settled yet)."""
        self._ids.append(int(token_id))
        settled = self._decode(self._ids).rstrip(INCOMPLETE_CHARACTER)
        if not settled.startswith(self._sent):
            return ""  # a decoder that rewrites earlier text: wait for more, `finish` reconciles
        piece = settled[len(self._sent) :]
        self._sent = settled
        return piece

    def finish(self) -> str:
        """The rest of the answer once no token follows; the pieces then join to `decode(ids)`."""
        whole = self._decode(self._ids)
        if not whole.startswith(self._sent):
            # Not seen with our byte-level tokenizer (it never rewrites settled text); a tokenizer
            # that merges across tokens could. Already-sent text cannot be taken back.
            logger.warning("streamed text %r is not a prefix of the decoded answer %r", self._sent, whole)
            common = 0
            while common < min(len(whole), len(self._sent)) and whole[common] == self._sent[common]:
                common += 1
            self._sent = whole
            return whole[common:]
        rest = whole[len(self._sent) :]
        self._sent = whole
        return rest
