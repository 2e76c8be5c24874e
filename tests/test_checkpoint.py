import os
import pickle
import random
import signal
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import mitools.checkpoint as ckpt
from mitools.checkpoint import (
    CheckpointError,
    GracefulExit,
    capture_rng_state,
    find_latest_checkpoint,
    folder_write_problem,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    to_plain,
)


def _state(step: int, epoch: int = 0) -> dict:
    return {"model": {"w": torch.full((3,), float(step))}, "epoch": epoch, "step": step}


def test_save_load_round_trip_and_no_temp_files(tmp_path):
    path = save_checkpoint(tmp_path / "run" / "last.pt", _state(5), verify=True)
    state = load_checkpoint(path)
    assert state["step"] == 5 and torch.equal(state["model"]["w"], torch.full((3,), 5.0))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]


def test_failed_save_leaves_previous_file_intact(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "last.pt", _state(1))
    real_save = torch.save

    def exploding_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)  # a full write has happened to the temp file...
        f.write(b"garbage")
        raise OSError("disk full (simulated)")  # ...then the process fails

    monkeypatch.setattr(ckpt.torch, "save", exploding_save)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(path, _state(2))
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # temp file removed


@pytest.fixture
def restore_umask():
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


def test_written_files_follow_the_umask(tmp_path, restore_umask):
    # mkstemp creates 0600 whatever the umask; the final file must look normally created
    for umask in (0o022, 0o027, 0o077):
        os.umask(umask)
        folder = tmp_path / f"u{umask:o}"
        writes = [
            (save_checkpoint, "last.pt", _state(1)),
            (save_checkpoint, "last.pt", _state(2)),  # over an existing file
            (ckpt.atomic_write_text, "r.json", "{}\n"),
            (ckpt.atomic_write_bytes, "b.bin", b"\x00\x01"),
        ]
        for write, name, content in writes:
            path = write(folder / name, content)
            assert path.stat().st_mode & 0o777 == 0o666 & ~umask, (path, oct(path.stat().st_mode))
        assert sorted(p.name for p in folder.iterdir()) == ["b.bin", "last.pt", "r.json"]


def test_atomic_write_text_round_trip_and_failure_keeps_old_file(tmp_path, monkeypatch):
    path = ckpt.atomic_write_text(tmp_path / "new" / "r.json", "é\r\nx")  # folder created
    assert path.read_bytes() == "é\r\nx".encode()  # UTF-8, no newline translation
    ckpt.atomic_write_text(path, "old")

    def failing_replace(src, dst):
        raise OSError("rename failed (simulated)")

    monkeypatch.setattr(ckpt.os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated"):
        ckpt.atomic_write_text(path, "new")
    monkeypatch.undo()
    assert path.read_text() == "old"
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # temp file removed


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    good = save_checkpoint(tmp_path / "good.pt", _state(3))
    files = {}
    files["empty"] = tmp_path / "empty.pt"
    files["empty"].write_bytes(b"")
    data = good.read_bytes()
    files["truncated"] = tmp_path / "truncated.pt"
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["text"] = tmp_path / "text.pt"
    files["text"].write_text("epoch,step\n1,2\n")
    files["zip"] = tmp_path / "other.zip"
    with zipfile.ZipFile(files["zip"], "w") as zf:
        zf.writestr("hello.txt", "not a checkpoint")
    files["binary"] = tmp_path / "binary.pt"
    files["binary"].write_bytes(bytes(range(1, 200)))
    return files


@pytest.mark.parametrize(
    ("kind", "pattern"),
    [
        ("empty", r"empty file \(0 bytes\)"),
        ("truncated", r"truncated or corrupt zip archive"),
        ("text", r"a text file, not a torch checkpoint"),
        ("zip", r"a zip archive but not a torch checkpoint \(no data\.pkl"),
        ("binary", r"not a zip archive or a torch checkpoint"),
    ],
)
def test_bad_files_give_one_line_checkpoint_errors(tmp_path, kind, pattern):
    path = _bad_files(tmp_path)[kind]
    with pytest.raises(CheckpointError, match=pattern) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.marker}",))


def test_malicious_pickle_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pt"
    torch.save({"model": _Evil(marker), "epoch": 0, "step": 0}, path)
    with pytest.raises(
        CheckpointError, match=r"refused by the safe \(weights_only\) loader.*system"
    ):
        load_checkpoint(path)
    assert not marker.exists()
    # The file is genuinely malicious: the unsafe loader runs the payload.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_malicious_raw_pickle_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "pwned_raw.txt"
    path = tmp_path / "evil_raw.pt"
    path.write_bytes(pickle.dumps(_Evil(marker), protocol=2))
    with pytest.raises(
        CheckpointError, match=r"refused by the safe \(weights_only\) loader.*system"
    ):
        load_checkpoint(path)
    assert not marker.exists()
    pickle.loads(path.read_bytes())  # the unsafe loader runs the payload
    assert marker.exists()


def test_plain_pickle_and_damaged_records_are_unreadable(tmp_path):
    path = tmp_path / "plain.pkl.pt"
    path.write_bytes(pickle.dumps({"model": 1}, protocol=2))
    with pytest.raises(CheckpointError, match="unreadable checkpoint"):
        load_checkpoint(path)


def test_non_plain_objects_and_missing_keys(tmp_path):
    path = tmp_path / "np.pt"
    torch.save({"model": {}, "epoch": 0, "step": 0, "x": np.arange(3)}, path)
    with pytest.raises(CheckpointError, match="refused by the safe"):
        load_checkpoint(path)
    path = save_checkpoint(tmp_path / "partial.pt", {"model": {}, "foo": 1})
    with pytest.raises(CheckpointError, match=r"missing required keys \['epoch', 'step'\]"):
        load_checkpoint(path)
    assert load_checkpoint(path, required=())["foo"] == 1
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="top-level object is a list"):
        load_checkpoint(tmp_path / "list.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="refused"):
        save_checkpoint(tmp_path / "v.pt", {"model": {}, "p": Path("/x")}, verify=True)
    assert not (tmp_path / "v.pt").exists()


def test_find_latest_skips_corrupt_newest(tmp_path):
    assert find_latest_checkpoint(tmp_path / "missing") is None
    assert find_latest_checkpoint(tmp_path) is None
    save_checkpoint(tmp_path / "ep1.pt", _state(100, epoch=1))
    save_checkpoint(tmp_path / "ep2.pt", _state(200, epoch=2))
    save_checkpoint(tmp_path / "zz_old.pt", _state(50, epoch=0))  # newest mtime, oldest content
    assert find_latest_checkpoint(tmp_path) == tmp_path / "ep2.pt"
    data = (tmp_path / "ep2.pt").read_bytes()
    (tmp_path / "ep3.pt").write_bytes(data[: len(data) // 3])  # a crash mid-write
    (tmp_path / "ep4.pt").write_bytes(b"")
    (tmp_path / ".ep5.pt.abc.tmp").write_bytes(data)  # leftover temp file: ignored
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.warns(UserWarning, match="skipping invalid checkpoint"):
        assert find_latest_checkpoint(tmp_path) == tmp_path / "ep2.pt"


def test_rng_capture_restore_reproduces_draws(tmp_path):
    random.seed(1)
    np.random.seed(2)  # noqa: NPY002
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached gaussian in Python's state
    np.random.standard_normal()  # noqa: NPY002 (leaves a cached gaussian in numpy too)
    state = capture_rng_state()
    expected = (
        [random.random() for _ in range(3)] + [random.gauss(0, 1)],
        np.random.standard_normal(5),  # noqa: NPY002
        torch.rand(5),
    )
    # The state must survive a weights_only round trip.
    path = save_checkpoint(tmp_path / "rng.pt", {"model": {}, "epoch": 0, "step": 0, "rng": state})
    loaded = load_checkpoint(path)["rng"]
    random.seed(99)
    np.random.seed(99)  # noqa: NPY002
    torch.manual_seed(99)
    restore_rng_state(loaded)
    got = (
        [random.random() for _ in range(3)] + [random.gauss(0, 1)],
        np.random.standard_normal(5),  # noqa: NPY002
        torch.rand(5),
    )
    assert got[0] == expected[0]
    np.testing.assert_array_equal(got[1], expected[1])
    assert torch.equal(got[2], expected[2])


def test_to_plain_converts_configs():
    from dataclasses import dataclass

    @dataclass
    class Cfg:
        out: Path
        lr: np.float64
        dims: tuple

    plain = to_plain({"cfg": Cfg(Path("/tmp/x"), np.float64(0.5), (1, 2))})
    assert plain == {"cfg": {"out": "/tmp/x", "lr": 0.5, "dims": [1, 2]}}
    assert type(plain["cfg"]["lr"]) is float
    with pytest.raises(ValueError, match="cannot store a object"):
        to_plain(object())


# signal.raise_signal delivers to the calling (main) thread, so the Python handler has run when it
# returns (os.kill(os.getpid()) is process-directed and may be taken by another thread).


def test_graceful_exit_sets_flag_and_restores_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with GracefulExit() as stop:
        assert not stop.requested
        signal.raise_signal(signal.SIGTERM)
        assert stop.requested and stop.signal_name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) == before


def test_graceful_exit_second_sigint_raises_keyboard_interrupt():
    # The second signal goes to the handler that was installed before. Set that handler
    # explicitly: in a long-lived pytest-xdist worker an earlier test or library may have
    # replaced Python's default one (seen in fresh-clone CI runs only).
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _second_sigint_raises()
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)


def test_graceful_exit_repeats_go_to_the_previous_handler_after_the_grace_time():
    # under srun torchrun a worker gets the scheduler's SIGTERM and the agent's forwarded one
    # back to back: that is one request, and the worker must live to write its checkpoint
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with GracefulExit(repeat_grace_s=0) as stop:
            signal.raise_signal(signal.SIGTERM)
            assert stop.requested and seen == []
            signal.raise_signal(signal.SIGTERM)
            assert seen == [signal.SIGTERM]
        with GracefulExit(repeat_grace_s=0.2) as stop:
            signal.raise_signal(signal.SIGTERM)
            signal.raise_signal(signal.SIGTERM)
            assert stop.requested and seen == [signal.SIGTERM]
            time.sleep(0.25)
            signal.raise_signal(signal.SIGTERM)  # a deliberate second request: escalate
            assert seen == [signal.SIGTERM] * 2
        with GracefulExit() as stop:  # the default grace holds a repeat too
            signal.raise_signal(signal.SIGTERM)
            signal.raise_signal(signal.SIGTERM)
            assert stop.requested and seen == [signal.SIGTERM] * 2
    finally:
        signal.signal(signal.SIGTERM, previous)
    with pytest.raises(ValueError, match="repeat_grace_s"):
        GracefulExit(repeat_grace_s=-1)


def _second_sigint_raises():
    with GracefulExit(repeat_grace_s=0) as stop:
        signal.raise_signal(signal.SIGINT)
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)


# ----------------------------------------------------------------------------- folder_write_problem


def test_folder_write_problem_creates_the_folder_and_leaves_nothing(tmp_path):
    folder = tmp_path / "a" / "b"
    assert folder_write_problem(folder) is None
    assert folder.is_dir() and list(folder.iterdir()) == []
    assert folder_write_problem(folder) is None  # an existing folder is fine too


def test_folder_write_problem_names_what_is_in_the_way(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert folder_write_problem(a_file) == "exists and is not a folder"
    assert folder_write_problem(a_file / "sub" / "deeper") == (
        f"cannot create the folder ({a_file} is not a folder)"
    )
    assert a_file.read_text() == "x"


def test_folder_write_problem_tries_a_real_file(tmp_path, monkeypatch):
    # os.access says yes to root on a read-only mount; the check must create a file as the atomic
    # writers do, so a refusal there is reported
    real_open = os.open

    def refuse(path, flags, *args):
        if Path(path).parent == tmp_path / "ro":
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(ckpt.os, "open", refuse)
    assert folder_write_problem(tmp_path / "ro") == "the folder is not writable (Permission denied)"
    assert folder_write_problem(tmp_path / "rw") is None


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_folder_write_problem_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        assert folder_write_problem(folder) == "the folder is not writable (Permission denied)"
        assert "cannot create the folder" in folder_write_problem(folder / "sub")
    finally:
        folder.chmod(0o755)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc")
def test_folder_write_problem_on_a_file_system_refusing_files():
    assert folder_write_problem("/proc").startswith("cannot create a file in the folder")
    assert folder_write_problem("/proc/no-such-folder").startswith("cannot create the folder (")
