"""The rehearsal's check of $OUT against the device tool's limits (the rehearsal itself,
two smoke leases with a kill, runs in CI as `make gpu-rehearsal`)."""

from __future__ import annotations

from experiments.rehearsal import MAX_FILE_BYTES, check_out


def test_out_within_the_limits_passes_and_each_violation_is_named(tmp_path):
    (tmp_path / "shift.tgz").write_bytes(b"x" * 100)
    (tmp_path / "shift.log").write_text("log")
    assert check_out(tmp_path) == []
    for i in range(7):
        (tmp_path / f"extra{i}.txt").write_text("x")
    assert check_out(tmp_path) == ["9 files (at most 8 come back)"]
    for i in range(7):
        (tmp_path / f"extra{i}.txt").unlink()
    with open(tmp_path / "big.bin", "wb") as fh:
        fh.truncate(MAX_FILE_BYTES + 1)
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "a" / "b" / "c" / "deep.txt").write_text("x")
    (tmp_path / "bad name.txt").write_text("x")
    bad = check_out(tmp_path)
    assert f"big.bin: {MAX_FILE_BYTES + 1} bytes (over {MAX_FILE_BYTES})" in bad
    assert "a/b/c/deep.txt: 3 folders deep (at most 2)" in bad
    assert "bad name.txt: a name outside [A-Za-z0-9._-]" in bad
