"""``ModelWorker``: a model and its context in a child process, so that a native abort is an exception here.

llama.cpp's RPC client calls ``GGML_ABORT`` (the process dies with SIGABRT)
when a server's connection is lost in the middle of a computation; no error
can reach the caller.  A worker process confines that: the parent sees the
child die, and raises :class:`mullama.rpc.RPCError` with what ggml printed.

    with ModelWorker(path, n_gpu_layers=-1, rpc_servers=["10.0.0.2:50052"]) as w:
        print(w.generate("Once upon a time", max_tokens=50))

The child is started with "spawn" (a fresh interpreter: no native state is
shared with the parent) and loads the model once; requests then cost one
message each way.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import tempfile
import time
from typing import Any, Iterator, Sequence

from .rpc import RPCError
from .sampling import _FIELDS, SamplerParams

_LOAD_KEYS = ("n_gpu_layers", "use_mmap", "use_mlock", "rpc_servers", "tensor_split", "split_mode", "main_gpu")
_CONTEXT_KEYS = ("n_ctx", "n_batch", "n_threads")


def _params_dict(params: SamplerParams | None) -> dict[str, Any] | None:
    # SamplerParams validates every assignment, so it crosses as its fields, not pickled.
    return None if params is None else {name: getattr(params, name) for name in _FIELDS}


def _child(conn: Any, path: str, load: dict[str, Any], context: dict[str, Any], stderr_path: str) -> None:
    # ggml writes its abort message to fd 2: keep it where the parent can read it.
    fd = os.open(stderr_path, os.O_WRONLY | os.O_APPEND)
    os.dup2(fd, 2)
    os.close(fd)
    from .context import Context
    from .model import Model
    try:
        model = Model.load(path, **load)
        ctx = Context(model, **context)
    except Exception as e:  # noqa: BLE001 - reported to the parent
        conn.send(("error", type(e).__name__, str(e)))
        return
    conn.send(("ready",))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if msg[0] == "close":
            ctx.close()
            model.close()
            conn.send(("closed",))
            return
        _, prompt, max_tokens, params, stop, ignore_eos = msg
        try:
            sp = SamplerParams(**params) if params is not None else None
            for piece in ctx.generate_stream(prompt, max_tokens, sp, stop=stop, ignore_eos=ignore_eos):
                conn.send(("piece", piece))
            conn.send(("done",))
        except Exception as e:  # noqa: BLE001 - reported to the parent
            conn.send(("error", type(e).__name__, str(e)))


def _exception(kind: str, message: str) -> BaseException:
    import builtins

    from .context import ContextFullError, GenerationCancelled
    known: dict[str, type[BaseException]] = {
        "RPCError": RPCError, "ContextFullError": ContextFullError, "GenerationCancelled": GenerationCancelled}
    cls = known.get(kind) or getattr(builtins, kind, None)
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        cls = RuntimeError
    return cls(message)


class ModelWorker:
    """A :class:`~mullama.Model` with one :class:`~mullama.Context`, in a child process.

    Takes ``Model.load``'s keyword arguments (``n_gpu_layers``,
    ``rpc_servers``, ``tensor_split``, ...) and ``Context``'s ``n_ctx``,
    ``n_batch``, ``n_threads``.  ``timeout`` (seconds, default none) bounds
    each call: a worker that takes longer is killed and RPCError raised.
    When the child dies (an RPC server lost mid-generation aborts it), the
    call raises RPCError and the worker is closed; make a new one to go on.
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout: float | None = None, **kwargs: Any) -> None:
        unknown = set(kwargs) - set(_LOAD_KEYS) - set(_CONTEXT_KEYS)
        if unknown:
            raise TypeError(f"ModelWorker got unexpected arguments: {', '.join(sorted(unknown))}")
        if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds or None, not {timeout!r}")
        self._timeout = timeout
        self._servers = tuple(kwargs.get("rpc_servers") or ())
        load = {k: v for k, v in kwargs.items() if k in _LOAD_KEYS}
        context = {k: v for k, v in kwargs.items() if k in _CONTEXT_KEYS}
        fd, self._stderr_path = tempfile.mkstemp(prefix="mullama-worker-", suffix=".log")
        os.close(fd)
        mp = multiprocessing.get_context("spawn")
        self._conn, child_conn = mp.Pipe()
        self._proc: Any = mp.Process(target=_child, args=(child_conn, os.fspath(path), load, context,
                                                          self._stderr_path), daemon=True)
        self._proc.start()
        child_conn.close()
        self._closed = False
        try:
            self._expect("load", ("ready",))
        except BaseException:
            self.close()
            raise

    # -- the parent's side of the pipe -------------------------------------------

    def _receive(self, what: str, deadline: float | None) -> tuple[Any, ...]:
        while True:
            wait = 0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))
            try:
                if self._conn.poll(wait):
                    msg: tuple[Any, ...] = self._conn.recv()
                    return msg
            except (EOFError, OSError):
                pass  # the child is gone: say how it died
            else:
                if self._proc.is_alive():
                    if deadline is not None and time.monotonic() >= deadline:
                        self._kill()
                        raise RPCError(f"the model worker did not finish {what} within {self._timeout:g} s "
                                       f"and was stopped{self._servers_hint()}")
                    continue
            self._proc.join(5)
            raise RPCError(self._death(what))

    def _expect(self, what: str, ok: tuple[str, ...]) -> tuple[Any, ...]:
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        msg = self._receive(what, deadline)
        if msg[0] == "error":
            raise _exception(msg[1], msg[2])
        if msg[0] not in ok:
            raise RuntimeError(f"unexpected message from the model worker: {msg[0]!r}")
        return msg

    def _servers_hint(self) -> str:
        return f" (RPC servers: {', '.join(self._servers)})" if self._servers else ""

    def _death(self, what: str) -> str:
        code = self._proc.exitcode
        self._closed = True
        how = f"exit status {code}"
        if code is not None and code < 0:
            try:
                how = f"signal {signal.Signals(-code).name}"
            except ValueError:
                how = f"signal {-code}"
        said = ""
        try:
            with open(self._stderr_path, encoding="utf-8", errors="replace") as f:
                lines = [ln.strip() for ln in f.read().splitlines()[-40:] if ln.strip()]
            # ggml's abort line ("...: GGML_ABORT ..."/"... failed"), else the last line
            said = next((ln for ln in reversed(lines) if "error" in ln.lower() or "abort" in ln.lower()
                         or "rpc" in ln.lower()), lines[-1] if lines else "")
        except OSError:
            pass
        return (f"the model worker died ({how}) during {what}{self._servers_hint()}"
                + (f": {said}" if said else "")
                + ". llama.cpp ends the process when an RPC server's connection is lost; "
                  "this worker is closed, start a new one when the servers are back")

    def _kill(self) -> None:
        if self._proc.is_alive():
            self._proc.kill()
        self._proc.join(5)
        self._closed = True

    # -- public -----------------------------------------------------------------

    @property
    def alive(self) -> bool:
        """True while the child process runs and can take requests."""
        return not self._closed and self._proc.is_alive()

    def generate_stream(self, prompt: str | Sequence[int], max_tokens: int = 100,
                        params: SamplerParams | None = None, *, stop: Sequence[str] | None = None,
                        ignore_eos: bool = False) -> Iterator[str]:
        """As :meth:`Context.generate_stream`, run in the worker; pieces arrive as they are made."""
        if self._closed:
            raise RuntimeError("this ModelWorker is closed")
        self._conn.send(("generate", prompt if isinstance(prompt, str) else list(prompt), max_tokens,
                         _params_dict(params), list(stop) if stop else None, ignore_eos))
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        while True:
            msg = self._receive("generation", deadline)
            if msg[0] == "piece":
                yield msg[1]
            elif msg[0] == "done":
                return
            elif msg[0] == "error":
                raise _exception(msg[1], msg[2])

    def generate(self, prompt: str | Sequence[int], max_tokens: int = 100, params: SamplerParams | None = None,
                 *, stop: Sequence[str] | None = None, ignore_eos: bool = False) -> str:
        """As :meth:`Context.generate`, run in the worker."""
        return "".join(self.generate_stream(prompt, max_tokens, params, stop=stop, ignore_eos=ignore_eos))

    def close(self) -> None:
        """Stop the child (politely, then by force); calling it again does nothing."""
        if not self._closed and self._proc.is_alive():
            try:
                self._conn.send(("close",))
                if self._conn.poll(10):
                    self._conn.recv()
            except (EOFError, OSError):
                pass
        self._closed = True
        self._proc.join(5)
        if self._proc.is_alive():
            self._kill()
        self._conn.close()
        try:
            os.unlink(self._stderr_path)
        except OSError:
            pass

    def __enter__(self) -> ModelWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_proc", None) is not None and not getattr(self, "_closed", True):
            self._kill()
