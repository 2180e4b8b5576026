"""An adversarial harness against the real engines (bwrap and docker): code above the banner, which now runs
inside the sandbox, tries to import the scorer, read held-out files and the planted sealed canary, reach the host
over the network, find the host's API key in its environment or in /proc, read the seed manifests and the git
repository, and write the ledger and the traces. Every attempt must fail; the harness's own work (a file in the
workdir, the trial's instructions) must succeed, so a probe that cannot run cannot pass as a blocked attack."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from autoembed import paths
from autoembed.agents.base import TrialContext
from autoembed.agents.harness import BANNER, HarnessAgent
from autoembed.sandbox.base import SandboxConfig
from autoembed.sandbox.bwrap import bwrap_problem
from autoembed.trace import TraceWriter
from tests import sandbox_attacks as attacks

BASELINE = Path(__file__).resolve().parents[1] / "harnesses" / "baseline.py"
KEY_CANARY = "sk-ant-real-key-canary-5e1d"

ATTACK = r'''
def run_task(env, llm, tools):
    import glob, json, os, socket, subprocess
    report = {}

    def attempt(name, action):
        try:
            report[name] = "LEAKED: " + repr(action())[:300]
        except BaseException as exc:  # noqa: BLE001
            report[name] = f"blocked: {type(exc).__name__}: {exc}"[:300]

    def read(path):
        with open(path, "rb") as fh:
            return fh.read(200)

    def find_key():
        seen = [os.environ.get(k, "") for k in os.environ] + list(os.environ)
        for environ in glob.glob("/proc/*/environ") + glob.glob("/proc/*/cmdline"):
            try:
                seen.append(read(environ).decode(errors="replace"))
            except OSError:
                pass
        hits = [s for s in seen if CANARY in s]
        if hits:
            return hits
        raise LookupError("no key anywhere")

    def connect(host, port):
        with socket.create_connection((host, port), timeout=3) as conn:
            return conn.recv(4)

    def listing(folder):
        found = [p for p in glob.glob(folder + "/**", recursive=True) if os.path.isfile(p)]
        if found:
            return found
        raise FileNotFoundError(f"nothing under {folder}")

    def write(path):
        with open(path, "w") as fh:
            fh.write("forged")
        return path

    attempt("import_scorer", lambda: __import__("autoembed.sealed.scorer"))
    attempt("read_sealed_canary", lambda: read(SEALED_CANARY_PATH))
    attempt("list_sealed", lambda: listing(SEALED_DIR))
    attempt("read_heldout_qrels", lambda: read(SEALED_DIR + "/data/heldout/debian/qrels.tsv"))
    attempt("find_host_key", find_key)
    for i, host in enumerate(HOSTS):
        attempt(f"socket_{i}_{host}", lambda host=host: connect(host, PORT))
    attempt("read_seed_manifests", lambda: listing(SEEDS_DIR))
    attempt("read_git", lambda: read(REPO_ROOT + "/.git/HEAD"))
    attempt("write_ledger", lambda: write(REPO_ROOT + "/ledger.jsonl"))
    attempt("write_results", lambda: write(REPO_ROOT + "/results.tsv"))
    attempt("write_traces", lambda: write(TRACES_DIR + "/forged.jsonl"))
    attempt("overwrite_harness_copy", lambda: write(__file__))
    report["control_instructions"] = read("instructions.md").decode()
    report["control_shell"] = subprocess.run(["bash", "-c", "echo shell-ok"], capture_output=True, text=True).stdout
    with open("attack_report.json", "w") as fh:
        json.dump(report, fh)
    return 1
'''


def adversarial_harness(tmp_path: Path, sealed_canary: Path, port: int) -> Path:
    constants = {"CANARY": KEY_CANARY, "SEALED_CANARY_PATH": str(sealed_canary), "SEALED_DIR": str(paths.SEALED_DIR),
                 "HOSTS": ["127.0.0.1", *attacks.host_addresses()], "PORT": port,
                 "SEEDS_DIR": str(paths.home() / "seeds"), "REPO_ROOT": str(paths.REPO_ROOT),
                 "TRACES_DIR": str(paths.traces_dir())}
    editable, adapter = BASELINE.read_text().split(BANNER, 1)
    body = "".join(f"{name} = {value!r}\n" for name, value in constants.items()) + ATTACK
    path = tmp_path / "adversarial.py"
    path.write_text(editable + body + "\n\n" + BANNER + adapter)
    return path


def make_box(kind: str, config: SandboxConfig):
    if kind == "bwrap":
        if bwrap_problem():
            pytest.skip(f"bwrap unusable here: {bwrap_problem()}")
        from autoembed.sandbox.bwrap import BwrapSandbox

        return BwrapSandbox(config)
    from autoembed.sandbox import factory

    if factory.docker_problem():
        pytest.skip(factory.docker_problem())
    return factory.make_sandbox("docker", config, progress=lambda line: None)


@pytest.mark.parametrize("kind", ["bwrap", pytest.param("docker", marks=pytest.mark.docker)])
def test_adversarial_harness_is_blocked_on_every_count(kind, tmp_path, sealed_canary, trace_file, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY_CANARY)  # the host's real key: it must not be found inside
    seeds = paths.home() / "seeds"
    seeds.mkdir(parents=True, exist_ok=True)
    (seeds / "planted.json").write_text("{}")
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "instructions.md").write_text("the instructions")
    (tmp_path / "script.json").write_text("[]")
    with attacks.tcp_server() as port:
        agent = HarnessAgent(adversarial_harness(tmp_path, sealed_canary, port), model=f"scripted:{tmp_path / 'script.json'}")
        config = SandboxConfig(workdir=workdir, deadline=time.time() + 300,
                               readonly_extra=agent.readonly_mounts())
        box = make_box(kind, config)
        box.start()
        ctx = TrialContext(workdir=workdir, sandbox=box, deadline=config.deadline, prompt="attack", model=None,
                           trace=TraceWriter(tmp_path / "trace.jsonl", "harness"), raw_log=tmp_path / "agent.log",
                           run_dir=tmp_path, progress=lambda line: None)
        try:
            outcome = agent.run(ctx)
        finally:
            box.stop()
    assert outcome.exit_reason == "finished", outcome.detail
    report = json.loads((workdir / "attack_report.json").read_text())
    assert report.pop("control_instructions") == "the instructions" and report.pop("control_shell") == "shell-ok\n"
    assert len([k for k in report if k.startswith("socket_")]) >= 1
    print(json.dumps(report, indent=1))
    leaked = {name: result for name, result in report.items() if not result.startswith("blocked")}
    if any(scratch in paths.REPO_ROOT.parents for scratch in attacks.PRIVATE_SCRATCH):
        # a checkout under /tmp (a CI clone) lies in the sandbox's private scratch: a write there lands in the
        # sandbox's own tmpfs, and the host-side check below is what must hold
        leaked = {name: result for name, result in leaked.items() if name not in ("write_ledger", "write_results")}
    assert not leaked, leaked
    for forged in (paths.REPO_ROOT / "ledger.jsonl", paths.REPO_ROOT / "results.tsv", paths.traces_dir() / "forged.jsonl"):
        assert not forged.exists() or "forged" not in forged.read_text(), forged
