import stat

import pytest

from simclrv2.atomic import atomic_path, atomic_write_text, publish, temporary_beside


def test_a_write_becomes_the_file_readable_by_everyone_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "new" / "result.json"
    atomic_write_text(target, "{}\n")
    assert target.read_text() == "{}\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in target.parent.iterdir()] == ["result.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "last.pt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_publish_without_replace_refuses_an_existing_file(tmp_path):
    target = tmp_path / "subset.txt"
    target.write_text("theirs")
    with temporary_beside(target) as tmp:
        tmp.write_text("mine")
        with pytest.raises(FileExistsError):
            publish(tmp, target, replace=False)
    assert target.read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["subset.txt"]
