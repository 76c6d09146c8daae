"""What a `rayapp` command shows on the console, and the log file that holds the rest.

The console gets what rayapp prints (stage lines, epoch lines, progress from the workers' stdout)
and, when a command fails, ends with one line: what failed, where, what to do, and where the
log is. Everything else (Ray's logs, the workers' stderr with their tracebacks, the driver's
traceback) goes to the command's log file: `<run.dir>/logs/<command>.log` for a local run.dir,
else (s3://, gs://: the storage may be the very thing that failed) a local
`<tmp>/rayapp-logs/<run.dir as a name>/<command>.log`. `--debug` also shows it all on the console,
and re-raises the error with its traceback.

Ray forwards every worker's stdout and stderr to the driver (`log_to_driver`) through a
dispatcher with one handler, `ray_print_logs`. Ray has no public hook to filter it, so
`attach_ray` swaps that handler (private `ray._private.worker`; tests/test_storage_outage.py::test_console_hook_into_ray_log_forwarding_exists fails if
it moves) for one that writes every line to the log file and passes only stdout to Ray's printer.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
import tempfile
import threading
import time
import traceback

from rayapp.storage import resolve

__all__ = ["start", "attach_ray", "finish", "log_exception", "log_path", "where"]

_state: dict = {"file": None, "path": None, "debug": False, "console": False}
_lock = threading.Lock()


def _log_file_for(command: str, run_dir: str) -> str:
    loc = resolve(run_dir)
    if loc.is_local:
        return os.path.join(loc.path, "logs", f"{command}.log")
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", loc.uri).strip("-")
    return os.path.join(tempfile.gettempdir(), "rayapp-logs", name, f"{command}.log")


def start(command: str, run_dir: str, debug: bool = False) -> str | None:
    """Open the command's log file (appending) and send Python logging there too."""
    _close()
    try:
        path = _log_file_for(command, run_dir)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        f = open(path, "a", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115 - lives with the process
    except Exception:  # noqa: BLE001 - no log file is no reason to fail the command
        return None
    f.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} rayapp {' '.join(sys.argv[1:])}\n")
    _state.update(file=f, path=path, debug=debug, console=True)
    handler = logging.StreamHandler(f)
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > logging.INFO:  # the console handler keeps its own level
        for h in root.handlers:
            if h is not handler and h.level == logging.NOTSET:
                h.setLevel(root.level)
        root.setLevel(logging.INFO)
    _state["handler"] = handler
    return path


def _close() -> None:
    """Forget an earlier command of this process (in-process calls of `main`, tests)."""
    old = _state.get("handler")
    if old is not None:
        logging.getLogger().removeHandler(old)
        logging.getLogger("ray").removeHandler(old)
    if _state["file"] is not None:
        _state["file"].close()
    _state.update(file=None, path=None, handler=None, console=False, ray=False)


def log_path() -> str | None:
    return _state["path"]


def where() -> str:
    """The end of the error line: where the details are."""
    if not _state["path"]:
        return ""
    return f" (details and tracebacks: {_state['path']}; --debug shows them here)"


def _write(text: str) -> None:
    with _lock:
        f = _state["file"]
        if f is not None and not f.closed:
            f.write(text)


def _worker_lines(data: dict, ray_printer) -> None:
    who = data.get("actor_name") or data.get("task_name")
    prefix = f"({who + ' ' if who else ''}pid={data.get('pid')}{' err' if data.get('is_err') else ''}) "
    _write("".join(f"{prefix}{line}\n" for line in data.get("lines", ())))
    if _state["console"] and (_state["debug"] or not data.get("is_err")):
        ray_printer(data)


def attach_ray() -> None:
    """After `ray.init(log_to_driver=True)`: workers' stderr to the log file only."""
    if _state["file"] is None:
        return
    import ray._private.worker as rw

    dispatcher = rw.global_worker_stdstream_dispatcher
    ignore_prefix = rw._should_ignore_worker_log_prefix(rw.global_worker)
    printer = functools.partial(rw.print_to_stdstream, ignore_prefix=ignore_prefix)
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", functools.partial(_worker_lines, ray_printer=printer))
    _state["ray"] = True
    ray_logger = logging.getLogger("ray")
    if _state.get("handler") and not ray_logger.propagate:
        ray_logger.addHandler(_state["handler"])


def log_exception(exc: BaseException) -> None:
    _write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))


def finish() -> None:
    """Before the last line: stop Ray (so nothing it still forwards can follow the line) and
    stop passing workers' output to the console."""
    _state["console"] = False
    sys.stdout.flush()
    if _state.get("ray"):  # a Ray this command did not start (tests, notebooks) stays up
        try:
            import ray

            if ray.is_initialized():
                ray.shutdown()
        except Exception as e:  # noqa: BLE001 - shutting down is best effort here
            _write(f"ray.shutdown failed: {e!r}\n")
    sys.stdout.flush()
    sys.stderr.flush()
