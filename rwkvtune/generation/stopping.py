"""Incremental text of each completion and the stop rules (stop token ids, stop strings)."""

from __future__ import annotations

from collections.abc import Sequence

from rwkvtune.tokenizer import StreamDecoder, WorldTokenizer


class CompletionText:
    """The decoded text of one completion, grown one token at a time, and where a stop string cut it.

    Decoding is incremental (a ``StreamDecoder`` holds back a split UTF-8 character), and after every
    token only the tail that could contain a new stop string is searched: a stop string that is only
    complete with this token's text must end inside it, so it starts at most ``len(stop) - 1`` characters
    before it. A stop string spanning any number of tokens is therefore found at the first token that
    completes it.
    """

    def __init__(self, tokenizer: WorldTokenizer, stop: Sequence[str], stop_token_ids: frozenset[int]):
        self._decoder = StreamDecoder(tokenizer)
        self._stop = tuple(stop)
        self._stop_ids = stop_token_ids
        self.text = ""
        self.stopped = False

    def add(self, token_id: int) -> bool:
        """Append ``token_id``; return whether it ends the completion (a stop id or a completed stop string).

        A stop id adds no text. After a stop string, ``text`` ends right before it.
        """
        if token_id in self._stop_ids:
            self.text += self._decoder.flush()
            self.stopped = True
            return True
        old_length = len(self.text)
        self.text += self._decoder.feed(token_id)
        cut = -1
        for stop in self._stop:
            at = self.text.find(stop, max(0, old_length - len(stop) + 1))
            if at != -1 and (cut == -1 or at < cut):
                cut = at
        if cut != -1:
            self.text = self.text[:cut]
            self.stopped = True
        return self.stopped

    def finish(self) -> str:
        """End a completion that did not stop: flush a split character (as U+FFFD) and return the text."""
        if not self.stopped:
            self.text += self._decoder.flush()
        return self.text

    def settled_text(self) -> str:
        """The text that no later token can take back: everything except a tail that could still grow
        into a stop string (for streaming)."""
        if self.stopped:
            return self.text
        hold = 0
        for stop in self._stop:
            for size in range(min(len(stop) - 1, len(self.text)), hold, -1):
                if stop.startswith(self.text[-size:]):
                    hold = size
                    break
        return self.text[: len(self.text) - hold]
