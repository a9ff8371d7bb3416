"""The result store: atomic records, resume bookkeeping, claims between processes, tolerance of foreign files."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tlbench.records import Record
from tlbench.store import SCHEMA_VERSION, ResultStore, atomic_write_text
from tlbench.types import UsageError


def test_write_read_roundtrip_and_schema(tmp_path, make_record):
    store = ResultStore(tmp_path)
    path = store.write(Record.from_json_dict(make_record("abc0123456")))
    assert path == tmp_path / "abc0123456.json"
    record = store.read("abc0123456")
    assert record.schema == SCHEMA_VERSION == 2 and record.metrics.test_top1 == 0.5
    written = json.loads(path.read_text())
    assert {k: written[k] for k in make_record("abc0123456")} == make_record("abc0123456"), "field for field"
    assert store.read("0000000000") is None
    assert not list(tmp_path.glob(".*.tmp")), "temp files must not be left behind"


def test_atomic_write_keeps_old_content_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "r.json"
    atomic_write_text(target, "old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_foreign_and_corrupt_files_are_skipped_with_a_warning(tmp_path, make_record):
    warnings = []
    store = ResultStore(tmp_path, warn=warnings.append)
    store.write(Record.from_json_dict(make_record("00000000aa")))
    (tmp_path / "corrupt.json").write_text('{"key": "x", "sta')
    (tmp_path / "foreign.json").write_text(json.dumps({"hello": "world"}))
    keys = [r.key for r in store.records()]
    assert keys == ["00000000aa"]
    assert len(warnings) == 2 and all("\n" not in w for w in warnings), warnings
    messages = " ".join(warnings)
    assert "corrupt.json" in messages and "foreign.json" in messages
    list(store.records())
    assert len(warnings) == 2, "each problem is warned about once"


def test_claim_is_exclusive_between_processes_and_released_on_death(tmp_path):
    store = ResultStore(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from tlbench.store import ResultStore
        assert ResultStore({str(tmp_path)!r}).claim("k1")
        print("claimed", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "claimed"
        assert store.claim("k1") is False, "a live process holds the claim"
        holder.kill()  # like kill -9: no cleanup code runs
        holder.wait()
        assert store.claim("k1") is True, "a dead process's claim must not block"
        store.release("k1")
        assert not (tmp_path / "k1.lock").exists()
    finally:
        holder.kill()


def test_claim_twice_in_one_process_is_refused_until_released(tmp_path):
    store = ResultStore(tmp_path)
    other = ResultStore(tmp_path)
    assert store.claim("k") is True
    assert other.claim("k") is False  # a second open file description cannot take the flock
    store.release("k")
    assert other.claim("k") is True


def test_check_writable_creates_nothing_and_names_the_fix(tmp_path):
    ResultStore(tmp_path / "a" / "b").check_writable()
    assert not (tmp_path / "a").exists()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UsageError, match="not a directory.*--results-dir"):
        ResultStore(blocker).check_writable()


def test_check_writable_refuses_a_directory_it_cannot_write(tmp_path, monkeypatch):
    """Simulated (CI runs as root, which may write anywhere): the directory's permission check says no."""
    readonly = tmp_path / "ro"
    readonly.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if Path(path) == readonly
                        else real_access(path, mode, **kw))
    with pytest.raises(UsageError, match=r"results directory .*ro' is not writable; choose another with "
                                         r"--results-dir"):
        ResultStore(readonly).check_writable()
    with pytest.raises(UsageError, match=r"results directory .*ro/new' cannot be created in .*ro'"):
        ResultStore(readonly / "new").check_writable()
    assert list(readonly.iterdir()) == []
    ResultStore(tmp_path / "elsewhere").check_writable()  # the real check still passes where writing works
