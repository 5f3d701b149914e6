"""core.prefetch: modules imported on a side thread, once per process, errors left to the real import."""

import sys

from difftem.core.prefetch import prefetch


def test_prefetch_imports_on_a_side_thread_once(tmp_path, monkeypatch):
    (tmp_path / "difftem_prefetch_probe.py").write_text("import threading\nLOADED_ON = threading.current_thread().name\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    thread = prefetch("difftem_prefetch_probe")
    assert thread is not None and thread.daemon
    thread.join(timeout=30)
    assert sys.modules["difftem_prefetch_probe"].LOADED_ON == "difftem-prefetch"
    assert prefetch("difftem_prefetch_probe") is None  # asked for before: nothing started
    del sys.modules["difftem_prefetch_probe"]


def test_a_missing_module_is_left_to_the_real_import():
    thread = prefetch("difftem_no_such_module_xyz")
    thread.join(timeout=30)
    assert not thread.is_alive() and "difftem_no_such_module_xyz" not in sys.modules
