'use strict';
// One base class for objects that own a native handle (mirrors mullama/_handle.py).
//
// The handle is freed by close() (also through `using` / Symbol.dispose) or,
// if the user never closes it, by a FinalizationRegistry whose held value
// holds the raw pointer and the free function, never the object itself, so
// the object can be collected.  Freeing happens at most once.  Every method
// reaches the pointer through ptr(), which throws after close() so that NULL
// never reaches C.
//
// Parents (a model) outlive their children (contexts, sampler chains): a
// child's held value keeps its parent alive, and a parent closed while
// children still live is marked closed at once but freed only when its last
// child is freed.

// Node before 18.18 has no Symbol.dispose; define it (as TypeScript's helpers
// do) so that the dispose method below has a stable key.
if (typeof Symbol.dispose !== 'symbol') {
  Object.defineProperty(Symbol, 'dispose', { value: Symbol.for('nodejs.dispose') });
}

const registry = new FinalizationRegistry((held) => release(held));

function release(held) {
  if (held.freed) return;
  held.freed = true;
  held.free(held.pointer);
  if (held.parent) letGo(held.parent);
}

/**
 * Keep `handle`'s native object alive while another native object refers to
 * it (a context using a LoRA adapter): close() then frees it only after letGo().
 */
function hold(handle) {
  handle._liveChildren += 1;
}

/** End a hold() (or a child's life); a handle closed meanwhile is freed now. */
function letGo(handle) {
  handle._liveChildren -= 1;
  if (handle._closeRequested && handle._liveChildren === 0 && handle._held && !handle._held.freed) {
    registry.unregister(handle._held);
    release(handle._held);
  }
}

class NativeHandle {
  constructor() {
    this._pointer = null;
    this._held = null;
    this._liveChildren = 0;
    this._closeRequested = false;
    this._pressure = null;
  }

  /**
   * Take ownership of `pointer`; `parent` is kept alive until it is freed.
   * `bytes`: about how much native memory it holds.  V8 cannot see native
   * memory, so an object nobody closes would otherwise never make it collect:
   * an ArrayBuffer of that size, never written (its pages are never made
   * resident), counts as external memory and makes V8 collect in proportion.
   */
  _attach(pointer, free, parent = null, bytes = 0) {
    this._pointer = pointer;
    if (parent) parent._liveChildren += 1;
    this._held = { pointer, free, parent, freed: false };
    registry.register(this, this._held, this._held);
    this._pressure = bytes > 0 ? new ArrayBuffer(Math.min(bytes, 2 ** 31)) : null;
  }

  /** The native pointer; throws once the object is closed. */
  ptr() {
    const p = this._pointer;
    if (p === null) {
      throw new Error(`${this.constructor.name} is ${this._held ? 'closed' : 'not initialised'}`);
    }
    return p;
  }

  /** True once close() was called (or construction failed). */
  get closed() {
    return this._pointer === null;
  }

  /** Release the native resources; calling it again does nothing. */
  close() {
    this._pointer = null;
    this._closeRequested = true;
    this._pressure = null;
    if (this._held && !this._held.freed && this._liveChildren === 0) {
      registry.unregister(this._held);
      release(this._held);
    }
  }

  /** Alias of close(), for code that says dispose. */
  dispose() {
    this.close();
  }

  [Symbol.dispose]() {
    this.close();
  }
}

module.exports = { NativeHandle, hold, letGo };
