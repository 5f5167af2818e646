"""fileio.building_dir: a folder is built under a temporary name and swapped in whole, or not at all."""
import pytest

from audio_mrkd.fileio import building_dir


def test_building_dir_swaps_in_the_new_folder(tmp_path):
    final = tmp_path / "out" / "set"
    with building_dir(final) as tmp:
        assert tmp.parent == final.parent and tmp.name.startswith(".set.") and not final.exists()
        (tmp / "a.txt").write_text("one")
    assert (final / "a.txt").read_text() == "one"
    assert final.stat().st_mode & 0o777 == 0o755                      # not mkdtemp's private 0700
    with building_dir(final) as tmp:                                  # replaces an older one
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.txt").write_text("two")
    assert sorted(p.name for p in final.iterdir()) == ["sub"]
    assert [p.name for p in final.parent.iterdir()] == ["set"]        # no temporary or old folder left


def test_building_dir_failure_keeps_the_older_folder(tmp_path):
    final = tmp_path / "set"
    with building_dir(final) as tmp:
        (tmp / "a.txt").write_text("one")
    with pytest.raises(RuntimeError, match="stopped"):
        with building_dir(final) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("stopped")
    assert (final / "a.txt").read_text() == "one"
    assert [p.name for p in tmp_path.iterdir()] == ["set"]


def test_record_log_drops_a_torn_last_line_and_appends_after_it(tmp_path):
    from audio_mrkd.fileio import append_line, read_lines
    log = tmp_path / "runs.jsonl"
    append_line(log, '{"a": 1}')
    append_line(log, '{"a": 2}')
    with open(log, "a") as handle:
        handle.write('{"a": 3, "b"')  # a crash in the middle of a write
    assert read_lines(log) == ['{"a": 1}', '{"a": 2}']
    append_line(log, '{"a": 3}')
    assert log.read_text() == '{"a": 1}\n{"a": 2}\n{"a": 3}\n'


def test_atomic_write_keeps_the_old_file_when_the_block_fails(tmp_path):
    from audio_mrkd.fileio import atomic_path, write_text
    target = tmp_path / "x.json"
    write_text(target, "old")
    with pytest.raises(OSError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise OSError("disk full")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.json"]
