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
