"""Pre-emption and the run-directory lock: SIGTERM / SIGUSR1 stop pretraining and fine-tuning after a step with the
checkpoint written (exit 128 + the signal's number) and ``--resume`` continues exactly; all DDP ranks stop at the
same step; a second process on a busy run directory is refused in one line; a stale lock never blocks a resume."""
from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from raddiffusion.cli import main
from raddiffusion.fileio import read_json
from raddiffusion.results.runfiles import CHECKPOINT, LOCK, read_metrics
from raddiffusion.train.checkpoint import read_safetensors
from raddiffusion.train.distributed import Process, global_any, global_max
from raddiffusion.train.finetune import finetune
from raddiffusion.train.preemption import Preempted, Preemption
from raddiffusion.train.runlock import EXITED_HOLDER_WAIT_S, RunLock
from raddiffusion.train.runs import RunError
from raddiffusion.train.pretrain import pretrain

from test_finetune import ORIGINAL_RECIPE, TINY, _write_store

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # the children run one thread too: the same arithmetic

BATCH, EPOCHS = 4, 2
STEPS_PER_EPOCH = 25 // BATCH  # 24 labelled train studies and one without labels (fine-tuning: 24 // BATCH)
PRETRAIN = {"epochs": EPOCHS, "batch_size": BATCH, "workers": 0, "probe_every": 0, "save_every": 100, "lr": 1e-3}
FINETUNE = {"epochs": 2, "batch_size": BATCH, "workers": 0, "save_every": 100, "lr": 1e-3, "resamples": 10}
ONE_PROCESS = Process(0, 1, 0, torch.device("cpu"))

# A child process running the command with a tiny "xs" preset; its steps after the first take `delay` seconds
# (the weights do not change) so that a signal sent after step 1 arrives mid-run; with `signal_at`, the process of
# rank `rank` sends SIGTERM to itself in its step `signal_at`.
CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    import raddiffusion.models.presets as presets
    import raddiffusion.train.{module} as module
    from raddiffusion.cli import main
    presets.PRESETS["xs"] = {{**presets.PRESETS["xs"], **{tiny!r}}}
    accumulate, calls = module.accumulate_gradients, [0]
    def slow(*args, **kwargs):
        calls[0] += 1
        if calls[0] > 1:
            time.sleep({delay!r})
        if calls[0] == {signal_at!r} and os.environ.get("RANK", "0") == "{rank}":
            os.kill(os.getpid(), signal.SIGTERM)
        return accumulate(*args, **kwargs)
    module.accumulate_gradients = slow
    sys.exit(main(sys.argv[1:]))
    """
)


def _child(module: str, delay: float, signal_at: int | None = None, rank: int = 0) -> str:
    tiny = {k: v for k, v in TINY.items() if k not in ("preset", "scheme")}
    return CHILD.format(module=module, tiny=tiny, delay=delay, signal_at=signal_at, rank=rank)


def _flags(train: dict) -> list[str]:
    flags = []
    for key, value in train.items():
        if isinstance(value, bool):
            flags.append(f"--{'' if value else 'no-'}{key.replace('_', '-')}")
        else:
            flags += [f"--{key.replace('_', '-')}", str(value)]
    return flags


def _pretrain_command(store: Path, run: Path, *extra: str) -> list[str]:
    return ["pretrain", str(store), "--run", str(run), "--device", "cpu", "--quiet", *_flags(PRETRAIN), *extra]


def _finetune_command(store: Path, run: Path, pretrained: Path, *extra: str) -> list[str]:
    return ["finetune", str(store), "--run", str(run), "--from", str(pretrained), "--device", "cpu", "--quiet",
            *_flags(ORIGINAL_RECIPE | FINETUNE), *extra]


def _start(script: str, argv: list[str]) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", script, *argv], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_step(process: subprocess.Popen, run: Path, step: int = 1) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if any(r["kind"] == "step" and r["step"] >= step for r in read_metrics(run)):
            return
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)
    _, stderr = process.communicate()
    pytest.fail(f"the run ended (code {process.returncode}) or took too long before step {step}:\n{stderr}")


def _stop_with(process: subprocess.Popen, number: int, group: bool = False) -> str:
    """Send signal ``number`` (to every process of the group, as a cluster does, when ``group``); the process must
    end within 60 s with 128 + number; returns its stderr."""
    if group:
        os.killpg(process.pid, number)
    else:
        os.kill(process.pid, number)
    try:
        _, stderr = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    assert process.returncode == 128 + number, stderr
    return stderr


def _messages(stderr: str, command: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(f"raddiffusion {command}:")]


def _checkpoint_step(run: Path) -> int:
    metadata, _ = read_safetensors(run / CHECKPOINT)
    return json.loads(metadata["progress"])["step"]


def _logged_steps(run: Path) -> list[int]:
    return [r["step"] for r in read_metrics(run) if r["kind"] == "step"]


def _assert_same_tensors(a: Path, b: Path) -> None:
    first, second = load_file(a), load_file(b)
    assert first.keys() == second.keys()
    for name, tensor in first.items():
        assert torch.equal(tensor, second[name]), name


def _lock_is_free(run: Path) -> bool:
    """Whether another process could take the run's record lock now (never ask while this process holds it)."""
    with open(run / LOCK, "a") as handle:
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        fcntl.lockf(handle, fcntl.LOCK_UN)
        return True


def _children(pid: int) -> list[int]:
    """The pids of the live processes whose parent is ``pid``."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            children.append(int(stat.parent.name))
    return children


def _is_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return _write_store(tmp_path_factory.mktemp("preemption"))


@pytest.fixture(scope="module")
def pretrained(store, tmp_path_factory) -> Path:
    """The uninterrupted pretraining run (the reference of the interrupted one; fine-tuning starts from it)."""
    run = tmp_path_factory.mktemp("pretrained") / "run"
    pretrain(store, run, model=TINY, train=PRETRAIN, device="cpu", progress=False)
    return run


# 1. the mechanism ---------------------------------------------------------------------------------------------------

def test_signals_are_recorded_only_inside_the_block_and_the_handlers_restored():
    before = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGUSR1)}
    with Preemption(ONE_PROCESS) as preemption:
        preemption.stop_if_requested(1, Path("run/checkpoint.safetensors"))  # nothing arrived: goes on
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)  # the first one counts
        saved = []
        with pytest.raises(Preempted) as raised:
            preemption.stop_if_requested(7, Path("run/checkpoint.safetensors"), lambda: saved.append(True))
    assert saved == [True]
    assert (raised.value.signal_number, raised.value.step, raised.value.exit_status) == (signal.SIGUSR1, 7, 138)
    assert str(raised.value) == ("stopped by SIGUSR1 after step 7; checkpoint written to run/checkpoint.safetensors; "
                                 "run the same command with --resume to continue")
    assert {number: signal.getsignal(number) for number in before} == before
    assert global_max(15, ONE_PROCESS) == 15 and global_any(True, ONE_PROCESS) and not global_any(False, ONE_PROCESS)


# 2. SIGTERM during pretraining, then --resume equals an uninterrupted run --------------------------------------------

def test_sigterm_stops_pretraining_with_a_checkpoint_and_resume_is_exact(store, pretrained, tmp_path, capsys):
    run = tmp_path / "run"
    process = _start(_child("pretrain", 0.1), _pretrain_command(store, run, "--workers", "1"))
    _wait_for_step(process, run)
    stderr = _stop_with(process, signal.SIGTERM, group=True)  # its DataLoader worker too: it must not die of it
    logged = _logged_steps(run)
    step = logged[-1]
    assert logged == list(range(1, step + 1)) and 1 <= step < EPOCHS * STEPS_PER_EPOCH  # stopped before the end
    assert _messages(stderr, "pretrain") == [
        f"raddiffusion pretrain: stopped by SIGTERM after step {step}; checkpoint written to {run / CHECKPOINT}; "
        "run the same command with --resume to continue"]
    assert _checkpoint_step(run) == step and not (run / "summary.json").exists()
    assert _lock_is_free(run)

    assert main(_pretrain_command(store, run, "--resume")) == 0
    assert "pretrain:" in capsys.readouterr().out
    assert read_json(run / "summary.json")["steps"] == read_json(pretrained / "summary.json")["steps"]
    _assert_same_tensors(run / "model.safetensors", pretrained / "model.safetensors")
    _assert_same_tensors(run / CHECKPOINT, pretrained / CHECKPOINT)
    assert _logged_steps(run) == _logged_steps(pretrained)


# 3. SIGUSR1 during fine-tuning ---------------------------------------------------------------------------------------

def test_sigusr1_stops_finetuning_with_a_checkpoint_and_resume_finishes_it(store, pretrained, tmp_path, capsys):
    reference = tmp_path / "reference"
    finetune(store, reference, pretrained=pretrained, train=ORIGINAL_RECIPE | FINETUNE, device="cpu", progress=False)

    run = tmp_path / "run"
    process = _start(_child("finetune", 0.1), _finetune_command(store, run, pretrained))
    _wait_for_step(process, run)
    stderr = _stop_with(process, signal.SIGUSR1)
    step = _logged_steps(run)[-1]
    assert _messages(stderr, "finetune") == [
        f"raddiffusion finetune: stopped by SIGUSR1 after step {step}; checkpoint written to {run / CHECKPOINT}; "
        "run the same command with --resume to continue"]
    assert _checkpoint_step(run) == step and not (run / "test_metrics.json").exists()

    assert main(_finetune_command(store, run, pretrained, "--resume")) == 0
    assert "finetune:" in capsys.readouterr().out
    assert read_json(run / "summary.json")["steps"] == read_json(reference / "summary.json")["steps"]
    _assert_same_tensors(run / "model.safetensors", reference / "model.safetensors")
    _assert_same_tensors(run / CHECKPOINT, reference / CHECKPOINT)
    assert read_json(run / "test_metrics.json") == read_json(reference / "test_metrics.json")


# 4. DDP: every rank stops at the step where one of them was signalled ------------------------------------------------

@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step(store, tmp_path):
    run = tmp_path / "run"
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    script = _child("pretrain", 0.0, signal_at=3, rank=1)  # rank 1 only, in its step 3
    ranks = [subprocess.Popen([sys.executable, "-c", script, *_pretrain_command(store, run)], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                              env=dict(os.environ, OMP_NUM_THREADS="1", RANK=str(rank), LOCAL_RANK=str(rank),
                                       WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)))
             for rank in range(2)]  # what torchrun would start
    try:
        stderr = [rank.communicate(timeout=120)[1] for rank in ranks]
    finally:
        for rank in ranks:
            if rank.poll() is None:
                os.killpg(rank.pid, signal.SIGKILL)
    assert [rank.returncode for rank in ranks] == [143, 143], stderr
    assert _messages(stderr[0], "pretrain") == [
        f"raddiffusion pretrain: stopped by SIGTERM after step 3; checkpoint written to {run / CHECKPOINT}; "
        "run the same command with --resume to continue"], stderr[0]
    assert _messages(stderr[1], "pretrain") == []  # one line for the job
    assert _logged_steps(run) == [1, 2, 3] and _checkpoint_step(run) == 3
    assert _lock_is_free(run)


# 5. the run-directory lock -------------------------------------------------------------------------------------------

def test_a_busy_run_is_refused_and_a_stale_lock_does_not_block_resume(store, tmp_path, capsys):
    run = tmp_path / "run"
    process = _start(_child("pretrain", 0.2), _pretrain_command(store, run))
    try:
        _wait_for_step(process, run)
        holder = (run / LOCK).read_text().split()
        assert holder[0] == str(process.pid)
        for extra in ([], ["--resume"]):
            capsys.readouterr()
            assert main(_pretrain_command(store, run, *extra)) == 2
            err = capsys.readouterr().err
            assert err.splitlines() == [
                f"raddiffusion pretrain: error: {run} is in use by another raddiffusion process (pid {process.pid} "
                f"on {holder[1]}); wait for it to end (or stop it), or choose another --run"]
        assert process.poll() is None  # the first one goes on, its lock file untouched
        assert (run / LOCK).read_text().split() == holder
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
    assert process.returncode == -signal.SIGKILL
    assert (run / LOCK).read_text().split() == holder  # left behind by the killed process: stale

    assert main(_pretrain_command(store, run, "--resume")) == 0
    assert read_json(run / "summary.json")["steps"] == EPOCHS * STEPS_PER_EPOCH
    assert _lock_is_free(run) and (run / LOCK).read_text() == ""  # released when the run function returned


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds the loader workers through /proc")
def test_sigkill_of_the_main_process_alone_resumes_at_once_and_ends_with_the_same_weights(
        store, pretrained, tmp_path, capsys):
    run = tmp_path / "run"
    with_workers = ("--workers", "2")
    process = _start(_child("pretrain", 0.3), _pretrain_command(store, run, *with_workers))
    try:
        deadline = time.monotonic() + 60
        while not (run / CHECKPOINT).is_file() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        workers = _children(process.pid)
        assert (run / CHECKPOINT).is_file() and len(workers) >= 2, process.poll()
        os.kill(process.pid, signal.SIGKILL)  # the OOM killer's way: the main process alone
        process.wait()
        assert any(_is_alive(w) for w in workers)  # its loader workers outlive it for a while
        capsys.readouterr()
        assert main(_pretrain_command(store, run, *with_workers, "--resume")) == 0, capsys.readouterr().err
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
    assert "in use" not in capsys.readouterr().err
    assert _checkpoint_step(run) == EPOCHS * STEPS_PER_EPOCH
    _assert_same_tensors(run / "model.safetensors", pretrained / "model.safetensors")
    _assert_same_tensors(run / CHECKPOINT, pretrained / CHECKPOINT)


def test_a_lock_naming_an_exited_holder_is_waited_for_then_taken(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    exited = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run / LOCK).write_text(f"{exited.stdout.strip()} {socket.gethostname()}\n")
    holder = subprocess.Popen(  # holds the lock for a moment without naming itself, as a left-behind child would
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
         "fcntl.lockf(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(1.0)", str(run / LOCK)],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    lock = RunLock.take(run)
    try:
        assert holder.wait(timeout=10) == 0  # it held the lock when the take began: taken once it let go
        assert capsys.readouterr().err.splitlines() == [
            f"note: {run}: the last holder, pid {exited.stdout.strip()}, has exited; its workers are ending; "
            f"retrying for up to {EXITED_HOLDER_WAIT_S:g} s"]
        assert (run / LOCK).read_text().split()[0] == str(os.getpid())
        with pytest.raises(RunError, match="already in use by this process"):
            RunLock.take(run)  # a second take in the holder would drop the lock when it closes the file
    finally:
        lock.release()
    assert _lock_is_free(run)


def test_a_lock_held_by_a_live_process_is_refused_at_once(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, socket, sys, time; f = open(sys.argv[1], 'a'); "
         "fcntl.lockf(f, fcntl.LOCK_EX); f.write(f'{os.getpid()} {socket.gethostname()}\\n'); f.flush(); "
         "print('held', flush=True); time.sleep(30)", str(run / LOCK)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        started = time.monotonic()
        with pytest.raises(RunError, match=f"in use by another raddiffusion process \\(pid {holder.pid} on "):
            RunLock.take(run)
        assert time.monotonic() - started < EXITED_HOLDER_WAIT_S  # no wait for a live holder
    finally:
        holder.kill()
        holder.communicate()


def test_a_run_refused_before_it_starts_leaves_no_run_directory(store, tmp_path, capsys):
    run = tmp_path / "new" / "run"
    assert main(_pretrain_command(store, run)) == 2  # the default preset's 256² does not fit the 64² store
    assert "holds 64² images but the model takes 256²" in capsys.readouterr().err
    assert not run.exists()  # the folder the lock made, and only the lock file in it, are gone
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    assert main(_pretrain_command(store, kept)) == 2
    assert sorted(p.name for p in kept.iterdir()) == [LOCK, "notes.txt"]  # a folder that existed stays as it was
