"""`with thing:` for what holds processes, devices or files: its `close()` runs however the block ends."""

from __future__ import annotations


class Closing:
    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
