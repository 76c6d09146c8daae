"""Key presses as they happen, through the X11 RECORD extension (python-xlib, imported lazily).

The recorder reads held keys as state at each frame boundary (QueryKeymap); a key pressed and
released between two boundaries would be missed. `KeyPressLatch` listens to every key press on
the server (real keyboards and XTEST alike: RECORD sees device events) in a thread of its own, on
connections of its own, and `take()` hands over the keys pressed since the last call, so a tap
shorter than a frame still counts at the next boundary. Servers without RECORD: `start()` returns
False and the state reading alone is used.
"""

from __future__ import annotations

import threading

from rayapp.envs.inputs.x11 import open_display

__all__ = ["KeyPressLatch"]


class KeyPressLatch:
    def __init__(self, codes: dict[int, str], display: str | None = None):
        self.codes = codes
        self.name = display
        self._pressed: set[str] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.events = 0  # key presses seen (of the watched keys)

    def start(self) -> bool:
        from Xlib import X
        from Xlib.ext import record

        self._ctl = open_display(self.name)
        if not self._ctl.has_extension("RECORD"):
            self._ctl.close()
            return False
        self._rec = open_display(self.name)
        self._ctx = self._rec.record_create_context(0, [record.AllClients], [{
            "core_requests": (0, 0), "core_replies": (0, 0), "ext_requests": (0, 0, 0, 0),
            "ext_replies": (0, 0, 0, 0), "delivered_events": (0, 0), "device_events": (X.KeyPress, X.KeyPress),
            "errors": (0, 0), "client_started": False, "client_died": False,
        }])  # fmt: skip
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="x11-record-keys", daemon=True)
        self._thread.start()
        self._ready.wait(5)
        return True

    def _run(self) -> None:
        from Xlib import X
        from Xlib.ext import record
        from Xlib.protocol import rq

        field = rq.EventField(None)

        def on_reply(reply) -> None:
            if reply.category == record.StartOfData:
                self._ready.set()
                return
            if reply.category != record.FromServer or reply.client_swapped or not reply.data:
                return
            data = reply.data
            while len(data):
                event, data = field.parse_binary_value(data, self._rec.display, None, None)
                if event.type == X.KeyPress and event.detail in self.codes:
                    with self._lock:
                        self._pressed.add(self.codes[event.detail])
                        self.events += 1

        try:
            self._rec.record_enable_context(self._ctx, on_reply)  # returns once the context is disabled
        except Exception:  # the connection went away: the state reading still works
            pass
        finally:
            self._ready.set()

    def take(self) -> set[str]:
        """The watched keys pressed since the last call."""
        with self._lock:
            out, self._pressed = self._pressed, set()
        return out

    def close(self) -> None:
        if self._thread is None:
            return
        try:
            self._ctl.record_disable_context(self._ctx)
            self._ctl.flush()
            self._thread.join(timeout=2)
            self._ctl.record_free_context(self._ctx)
            self._ctl.flush()
        except Exception:
            pass
        finally:
            for d in (self._ctl, self._rec):
                try:
                    d.close()
                except Exception:
                    pass
            self._thread = None
