"""One base class for objects that own a native handle.

The handle is freed by a ``weakref.finalize`` whose callback holds the raw
pointer and the free function, never the object: the object can be collected,
``close()`` is idempotent, and freeing happens at most once, also at
interpreter exit.  Every method reaches the pointer through ``ptr()``, which
raises after ``close()`` so that NULL never reaches C.

Parents (a Model) outlive their children (Contexts, samplers): a child's
finalizer holds its parent, and a parent closed while children still live is
marked closed at once but freed only when its last child is freed.
"""

from __future__ import annotations

import os
import weakref
from typing import Callable

from typing_extensions import Self


class NativeHandle:
    """Owns one native pointer; subclasses call ``_attach`` once it exists."""

    _pointer: int | None = None
    _finalizer: weakref.finalize | None = None  # type: ignore[type-arg]
    _live_children: int = 0
    _close_requested: bool = False

    def _attach(self, pointer: int, free: Callable[[int], None], parent: NativeHandle | None = None) -> None:
        """Take ownership of ``pointer``; ``parent`` is kept alive until it is freed."""
        self._pointer = pointer
        if parent is not None:
            parent._live_children += 1
        self._finalizer = weakref.finalize(self, _release, free, pointer, os.getpid(), parent)

    def ptr(self) -> int:
        """The native pointer; raises RuntimeError once the object is closed."""
        p = self._pointer
        if p is None:
            state = "closed" if self._finalizer is not None else "not initialised"
            raise RuntimeError(f"{type(self).__name__} is {state}")
        return p

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called (or construction failed)."""
        return self._pointer is None

    def close(self) -> None:
        """Release the native resources; calling it again does nothing."""
        self._pointer = None
        self._close_requested = True
        if self._finalizer is not None and self._live_children == 0:
            self._finalizer()

    def __enter__(self) -> Self:
        self.ptr()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def hold(handle: NativeHandle) -> None:
    """Keep ``handle``'s native object alive while another native object refers to it
    (a context using a LoRA adapter): ``close()`` then frees it only after :func:`let_go`."""
    handle._live_children += 1


def let_go(handle: NativeHandle) -> None:
    """End a :func:`hold` (or a child's life); a handle closed meanwhile is freed now."""
    handle._live_children -= 1
    if handle._close_requested and handle._live_children == 0 and handle._finalizer is not None:
        handle._finalizer()


def _release(free: Callable[[int], None], pointer: int, pid: int, parent: NativeHandle | None) -> None:
    # A child made by fork() inherits the parent's objects but must never free
    # the parent process's native memory (thread pools and GPU state do not
    # survive fork, and freeing them there can hang or crash the child).
    if os.getpid() == pid:
        free(pointer)
    if parent is not None:
        let_go(parent)
