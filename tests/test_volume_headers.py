"""MRC headers: volumes are written as volumes (mz = nz, space group 1, the voxel in x, y and z, origin set) and
stacks as stacks (mz = 1, space group 0, the pixel in z too), read back with mrcfile."""

from __future__ import annotations

import io
import os

import mrcfile
import numpy as np
import pytest

from difftem.io.files import write_mrc, write_volume


def test_volume_header_has_the_voxel_in_z():
    import tempfile
    from pathlib import Path

    vol = np.random.default_rng(0).standard_normal((6, 8, 10)).astype(np.float32)
    with tempfile.TemporaryDirectory() as d:
        path = write_volume(Path(d) / "v.mrc", vol, 3.0, origin_a=(-15.0, -12.0, -9.0))
        with mrcfile.open(path) as m:
            assert m.data.shape == (6, 8, 10)
            np.testing.assert_array_equal(m.data, vol)
            assert (int(m.header.mx), int(m.header.my), int(m.header.mz)) == (10, 8, 6)
            assert int(m.header.ispg) == 1
            assert m.is_volume() and not m.is_image_stack()
            assert (float(m.voxel_size.x), float(m.voxel_size.y), float(m.voxel_size.z)) == (3.0, 3.0, 3.0)
            assert tuple(float(v) for v in m.header.origin.tolist()) == (-15.0, -12.0, -9.0)


def test_stack_header_is_a_stack_with_the_pixel_in_z(tmp_path):
    stack = np.ones((5, 8, 10), np.float32)
    with mrcfile.open(write_mrc(tmp_path / "s.mrcs", stack, 1.5)) as m:
        assert int(m.header.mz) == 1 and int(m.header.ispg) == 0 and m.is_image_stack()
        assert float(m.voxel_size.z) == 1.5  # the cell's z is one section, not nz of them
        assert tuple(float(v) for v in m.header.origin.tolist()) == (0.0, 0.0, 0.0)
    with mrcfile.open(write_mrc(tmp_path / "i.mrc", stack[0], 1.5)) as m:
        assert m.is_single_image() and float(m.voxel_size.x) == 1.5


def test_a_volume_must_be_three_dimensional(tmp_path):
    with pytest.raises(ValueError, match="3-D"):
        write_volume(tmp_path / "bad.mrc", np.zeros((4, 4), np.float32), 1.0)


def test_reconstruct_writes_a_volume(tmp_path):
    """`difftem reconstruct` output: a (Z, Y, X) volume header, the voxel (pixel × binning) in z."""
    from typer.testing import CliRunner

    from difftem.cli._app import app
    from difftem.io.tlt import write_tlt

    angles = np.linspace(-60, 60, 9)
    rng = np.random.default_rng(1)
    write_mrc(tmp_path / "tilts.mrc", rng.standard_normal((9, 24, 24)).astype(np.float32), 2.0)
    write_tlt(tmp_path / "tilts.tlt", angles)
    res = CliRunner().invoke(app, ["reconstruct", str(tmp_path / "tilts.mrc"), "--tlt", str(tmp_path / "tilts.tlt"),
                                   "--out", str(tmp_path / "vol.mrc"), "--thickness-vox", "8", "--binning", "2"])
    assert res.exit_code == 0, res.output
    with mrcfile.open(tmp_path / "vol.mrc") as m:
        nz = m.data.shape[0]
        assert int(m.header.mz) == nz == 8 and int(m.header.ispg) == 1
        assert float(m.voxel_size.z) == float(m.voxel_size.x) == 4.0


@pytest.mark.parametrize("volume", [False, True])
def test_header_statistics_match_the_data(tmp_path, volume):
    """dmin, dmax, dmean and rms (computed plane by plane, without a whole-stack temporary) equal numpy's over the
    whole array, for stacks and volumes, float and integer data; a NaN still warns as mrcfile does."""
    data = np.random.default_rng(1).gamma(3.0, 10.0, (7, 9, 11)).astype(np.float32) + 1e3
    path = write_mrc(tmp_path / "s.mrc", data, 2.0, volume=volume)
    with mrcfile.open(path) as m:
        h = m.header
        assert (float(h.dmin), float(h.dmax)) == (float(data.min()), float(data.max()))
        assert float(h.dmean) == pytest.approx(float(data.mean(dtype=np.float64)), rel=1e-7)
        assert float(h.rms) == pytest.approx(float(data.std(dtype=np.float64)), rel=1e-6)
        assert mrcfile.validate(str(path), print_file=io.StringIO())
    from difftem.io.files import new_mrc

    labels = np.arange(7 * 9 * 11, dtype=np.int16).reshape(7, 9, 11) % 5
    with new_mrc(tmp_path / "l.mrc") as m:
        m.set_data(labels)
    with mrcfile.open(tmp_path / "l.mrc") as m:
        assert float(m.header.rms) == pytest.approx(float(labels.std()), rel=1e-6)
        assert float(m.header.dmax) == 4.0
    bad = data.copy()
    bad[2, 3, 4] = np.nan
    with pytest.warns(RuntimeWarning, match="NaN"):
        write_mrc(tmp_path / "n.mrc", bad, 2.0)


def _stack_bytes(tmp_path, name, data):
    return write_mrc(tmp_path / name, data, 1.5).read_bytes()


def _direct(fd):
    import fcntl

    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)


@pytest.mark.parametrize("chunk_bytes", [8192, 1 << 20])
def test_large_files_written_past_the_page_cache_are_byte_identical(tmp_path, monkeypatch, chunk_bytes):
    """Stacks at or above DIRECT_IO_MIN_BYTES go through O_DIRECT and an aligned bounce buffer: the file is byte for
    byte the plainly written one (header, data crossing bounce-buffer boundaries, the padded last block cut off), and
    an output replacing a longer file is cut to its own length."""
    from difftem.io import files

    data = np.random.default_rng(5).normal(size=(3, 37, 41)).astype(np.float32)  # 18,204 bytes + a 1,024-byte header
    monkeypatch.setenv("DIFFTEM_DIRECT_IO", "0")
    plain = _stack_bytes(tmp_path, "plain.mrc", data)
    monkeypatch.delenv("DIFFTEM_DIRECT_IO")
    monkeypatch.setattr(files, "DIRECT_IO_MIN_BYTES", 1)
    monkeypatch.setattr(files, "_DIRECT_CHUNK_BYTES", chunk_bytes)
    direct_writes = []
    real = files._pwrite_all
    monkeypatch.setattr(files, "_pwrite_all", lambda fd, view, offset: direct_writes.append(_direct(fd))
                        or real(fd, view, offset))
    assert _stack_bytes(tmp_path, "direct.mrc", data) == plain
    assert direct_writes and all(direct_writes) and len(direct_writes) == -(-len(plain) // chunk_bytes)
    with mrcfile.open(tmp_path / "direct.mrc") as m:
        assert np.array_equal(m.data, data)
    with open(tmp_path / "longer.bin", "wb") as fh:  # write_from_start on a file longer than what it writes
        fh.write(b"x" * 50_000)
    with open(tmp_path / "longer.bin", "r+b") as fh:
        files.write_from_start(fh.fileno(), [b"head", data])
        assert not _direct(fh.fileno())  # the file's flags given back
    assert (tmp_path / "longer.bin").read_bytes() == b"head" + data.tobytes()


@pytest.mark.parametrize("refused_at", ["flags", "first write", "second write"])
def test_a_file_system_refusing_direct_writes_gets_plain_ones(tmp_path, monkeypatch, refused_at):
    """EINVAL when O_DIRECT is set, or from a direct write (a file system without it, or with larger blocks), even
    after a first piece went directly: the rest is written plainly and the file is byte-identical; any other error (a
    full disk) is raised and leaves no file."""
    import errno
    import fcntl

    from difftem.io import files

    data = np.arange(3 * 40 * 40, dtype=np.float32).reshape(3, 40, 40)
    monkeypatch.setenv("DIFFTEM_DIRECT_IO", "0")
    plain = _stack_bytes(tmp_path, "plain.mrc", data)
    monkeypatch.delenv("DIFFTEM_DIRECT_IO")
    monkeypatch.setattr(files, "DIRECT_IO_MIN_BYTES", 1)
    monkeypatch.setattr(files, "_DIRECT_CHUNK_BYTES", 8192)
    real_pwrite, real_fcntl = files._pwrite_all, fcntl.fcntl
    seen = []

    def pwrite(fd, view, offset, err=errno.EINVAL):
        if _direct(fd):
            seen.append(offset)
            if refused_at != "flags" and len(seen) == (1 if refused_at == "first write" else 2):
                raise OSError(err, os.strerror(err))
        return real_pwrite(fd, view, offset)

    def set_flags(fd, cmd, *arg):
        if refused_at == "flags" and cmd == fcntl.F_SETFL and arg[0] & os.O_DIRECT:
            raise OSError(errno.EINVAL, "direct I/O not supported")
        return real_fcntl(fd, cmd, *arg)

    monkeypatch.setattr(files, "_pwrite_all", pwrite)
    monkeypatch.setattr(fcntl, "fcntl", set_flags)
    assert _stack_bytes(tmp_path, "fallback.mrc", data) == plain
    assert len(seen) == {"flags": 0, "first write": 1, "second write": 2}[refused_at]
    if refused_at == "flags":
        return
    seen.clear()
    monkeypatch.setattr(files, "_pwrite_all", lambda fd, view, offset: pwrite(fd, view, offset, errno.ENOSPC))
    with pytest.raises(OSError) as info:
        _stack_bytes(tmp_path, "full.mrc", data)
    assert info.value.errno == errno.ENOSPC and not (tmp_path / "full.mrc").exists()
