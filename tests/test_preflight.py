"""Preflight and the CLI's rough edges: bad input fails in seconds with one line and exit status 2, before a run
folder exists; a start that fails after that leaves a folder that says failed_to_start; help texts and
messages say what a newcomer needs. Each case checks its exit status and its message."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from autoembed.paths import REPO_ROOT
from tests.fakellm import Fault, FakeLLM
from tests.tiny_task import keyless_tiny_task

BASELINE = REPO_ROOT / "harnesses" / "baseline.py"


@pytest.fixture
def task_dir(tmp_path_factory, monkeypatch) -> Path:
    return keyless_tiny_task(tmp_path_factory, monkeypatch)


@pytest.fixture
def traces(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "traces"
    monkeypatch.setenv("AUTOEMBED_TRACES", str(path))
    return path


def autoembed(args: list[str], capsys) -> tuple[int, str, str]:
    """`autoembed ARGS` in process: (exit status, stdout, stderr); a traceback fails the test."""
    from autoembed.cli import main

    try:
        code = main(args)
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def no_trial_folder(traces: Path) -> bool:
    return not traces.exists() or not any(traces.iterdir())


# -- bad input: exit 2, one line, no run folder ------------------------------------------------------------------
BAD_INPUT = {
    "unknown agent": (["nosuch"], "unknown agent 'nosuch'"),
    "unknown provider": ([f"harness:{BASELINE}", "--model", "nosuch:model-x"], "unknown provider 'nosuch'"),
    "model without provider": ([f"harness:{BASELINE}", "--model", "claude-sonnet-4-6"], "needs a provider prefix"),
    "missing script": ([f"harness:{BASELINE}", "--model", "scripted:/no/such/script.json"], "no script file"),
    "hours nan": (["recipe", "--hours", "nan"], "--hours must be positive and finite, got nan"),
    "hours inf": (["recipe", "--hours", "inf"], "--hours must be positive and finite, got inf"),
    "hours negative": (["recipe", "--hours", "-1"], "--hours must be positive and finite, got -1.0"),
    "claude without key": (["claude", "--hours", "0.01"],
                           "no API key for anthropic: set ANTHROPIC_API_KEY or CLAUDE_CODE_OAUTH_TOKEN"),
    "codex without key": (["codex", "--hours", "0.01"], "no API key for openai: set OPENAI_API_KEY or CODEX_API_KEY"),
    "gemini without key": (["gemini", "--hours", "0.01"], "no API key for google: set GEMINI_API_KEY or GOOGLE_API_KEY"),
    "unpriced harness model": ([f"harness:{BASELINE}", "--model", "anthropic:claude-nosuch-9", "--hours", "0.01"],
                               "no known price for anthropic:claude-nosuch-9"),
    "prefix of a priced model": ([f"harness:{BASELINE}", "--model", "openai:gpt-5-nosuch", "--hours", "0.01"],
                                 "AUTOEMBED_PRICES='<model>=<input>,<output>"),
    "harness without key": ([f"harness:{BASELINE}", "--model", "anthropic:claude-sonnet-4-6", "--hours", "0.01"],
                            "no API key for anthropic: set ANTHROPIC_API_KEY"),
    "budget too short for a cli": (["claude", "--hours", "0.005"],
                                   "--hours 0.005 gives the claude agent 18.0 s, too short to act: it needs at least "
                                   "30 s (--hours 0.009 or more)"),
    "budget too short for a harness": ([f"harness:{BASELINE}", "--model", "anthropic:claude-sonnet-4-6",
                                        "--hours", "0.002"], "gives the harness agent 7.2 s, too short to act"),
    "gpu ids": (["recipe", "--hours", "0.01", "--gpus", "first"], "--gpus first: GPU ids are indices such as 0"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_fails_before_anything_runs(case, task_dir, traces, capsys):
    args, message = BAD_INPUT[case]
    code, out, err = autoembed(["run", *args, "--task", str(task_dir), "--sandbox", "bwrap"], capsys)
    assert code == 2, (out, err)
    assert message in err, err
    assert err.startswith("autoembed run: error: ") and len(err.strip().splitlines()) == 1, err
    assert no_trial_folder(traces), "bad input must not leave a run folder"


HOST_SETTINGS = {
    "malformed user prices": ({"AUTOEMBED_PRICES": "my-model=3"}, "AUTOEMBED_PRICES: bad entry 'my-model=3'"),
    "root as the sandbox uid": ({"AUTOEMBED_SANDBOX_UID": "0"}, "AUTOEMBED_SANDBOX_UID='0': give a positive number"),
    "an account's uid": ({"AUTOEMBED_SANDBOX_UID": str(os.getuid() or 0)}, None),
}


@pytest.mark.parametrize("case", list(HOST_SETTINGS))
def test_bad_host_settings_fail_before_anything_runs(case, task_dir, traces, monkeypatch, capsys):
    settings, message = HOST_SETTINGS[case]
    if message is None:  # uid 0 is root's: as root that is the case above; an account's uid names the account
        import pwd

        if os.geteuid() != 0:
            pytest.skip("the sandbox uid is the invoking user's unless the host runs as root")
        settings = {"AUTOEMBED_SANDBOX_UID": str(pwd.getpwnam("daemon").pw_uid)}
        message = "belongs to the account 'daemon'"
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    code, out, err = autoembed(["run", "recipe", "--task", str(task_dir), "--sandbox", "bwrap", "--hours", "0.01"],
                               capsys)
    assert code == 2, (out, err)
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert no_trial_folder(traces)


def test_a_user_price_lets_an_unpriced_harness_model_through(monkeypatch):
    from autoembed.trial.preflight import check_harness_model

    check_harness_model("openai:gpt-5-nosuch", {"AUTOEMBED_PRICES": "gpt-5-nosuch=1,2"})
    check_harness_model("openai:gpt-5-pro", {})  # in the table under its own name, not as gpt-5


def test_unknown_task_lists_the_task_names(traces, capsys):
    code, _, err = autoembed(["run", "recipe", "--task", "nosuchtask"], capsys)
    assert code == 2 and "no task 'nosuchtask'" in err
    assert "one of ['embed']" in err, err  # the task names, not ['task.toml']
    assert no_trial_folder(traces)


def test_a_task_toml_syntax_error_names_the_file(tmp_path, traces, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "task.toml").write_text('name = "broken"\n[budget\nhours = 1\n')
    code, _, err = autoembed(["run", "recipe", "--task", str(broken)], capsys)
    assert code == 2, err
    assert f"{broken / 'task.toml'} is not valid TOML" in err and "line 2" in err, err
    assert no_trial_folder(traces)


def test_a_missing_sandbox_engine_is_bad_input(task_dir, traces, monkeypatch, capsys):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    code, _, err = autoembed(["run", "recipe", "--task", str(task_dir), "--sandbox", "docker", "--hours", "0.01"], capsys)
    assert code == 2
    assert "--sandbox docker: no Docker engine answers at unix:///nonexistent/docker.sock (no socket there)" in err, err
    assert "DockerException" not in err and len(err.strip().splitlines()) == 1
    assert no_trial_folder(traces)


def test_auto_sandbox_falls_back_to_bwrap_with_a_one_line_notice(monkeypatch):
    from autoembed.trial.preflight import resolve_sandbox
    from autoembed.sandbox.bwrap import bwrap_problem

    if bwrap_problem() is not None:
        pytest.skip(f"bwrap unusable here: {bwrap_problem()}")
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    kind, notices = resolve_sandbox("auto")
    assert kind == "bwrap"
    assert notices == ["sandbox: bwrap, because no Docker engine answers at unix:///nonexistent/docker.sock "
                       "(no socket there); start one with `dockerd &`"]


# -- the live key check against the fake provider ---------------------------------------------------------------
PROVIDERS = {  # agent args, environment (with {url}), the variable the check names
    "anthropic": ([f"harness:{BASELINE}", "--model", "anthropic:claude-sonnet-4-6"],
                  {"ANTHROPIC_BASE_URL": "{url}", "ANTHROPIC_API_KEY": "sk-ant-bad"}, "ANTHROPIC_API_KEY"),
    "openai": ([f"harness:{BASELINE}", "--model", "openai:gpt-4o"],
               {"OPENAI_BASE_URL": "{url}/v1", "OPENAI_API_KEY": "sk-bad"}, "OPENAI_API_KEY"),
    "google": (["gemini"], {"GOOGLE_GEMINI_BASE_URL": "{url}", "GEMINI_API_KEY": "bad-key"}, "GEMINI_API_KEY"),
}


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_a_rejected_key_fails_in_seconds(provider, task_dir, traces, monkeypatch, capsys):
    args, env, name = PROVIDERS[provider]
    body = {"error": {"type": "authentication_error", "message": "invalid api key"}}
    with FakeLLM(faults=[Fault("status", 401, body=body)]) as fake:
        for var, value in env.items():
            monkeypatch.setenv(var, value.format(url=fake.url))
        code, _, err = autoembed(["run", *args, "--task", str(task_dir), "--sandbox", "bwrap", "--hours", "0.01"], capsys)
        [request] = fake.requests
    assert code == 2, err
    assert f"{provider} rejected {name} (HTTP 401: invalid api key): set a valid key" in err, err
    assert request["method"] == "GET" and "/models" in request["path"]
    assert no_trial_folder(traces)


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_an_accepted_key_passes_with_one_cheap_call(provider, task_dir, monkeypatch):
    from autoembed.trial.preflight import preflight

    args, env, name = PROVIDERS[provider]
    with FakeLLM() as fake:
        for var, value in env.items():
            monkeypatch.setenv(var, value.format(url=fake.url))
        plan = preflight(args[0], model=args[2] if len(args) > 2 else None, task=str(task_dir), hours=0.01,
                         sandbox="none")
    assert plan.key_check == "accepted" and plan.notices == []
    [request] = fake.requests
    headers = {k.lower(): v for k, v in request["headers"].items()}
    secret = env[name]
    assert secret in (headers.get("x-api-key"), headers.get("x-goog-api-key"), headers.get("authorization", "")[7:])


def test_an_unreachable_provider_is_noted_not_fatal(task_dir, monkeypatch):
    from autoembed.trial.preflight import preflight

    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-x")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    plan = preflight("claude", task=str(task_dir), hours=0.01, sandbox="none")
    assert plan.key_check.startswith("not checked: http://127.0.0.1:9/v1/models")
    assert plan.notices == [f"anthropic key {plan.key_check}"]


# -- a start that fails after preflight ---------------------------------------------------------------------------
def test_a_failed_start_leaves_a_folder_that_says_so(task_dir, tmp_path, monkeypatch, capsys):
    from autoembed.trial import run as run_module

    def engine_gone(*args, **kwargs):
        raise RuntimeError("the Docker engine stopped answering")

    monkeypatch.setattr(run_module, "make_sandbox", engine_gone)
    out = tmp_path / "run"
    code, _, err = autoembed(["run", "recipe", "--task", str(task_dir), "--sandbox", "bwrap", "--hours", "0.01",
                              "--out", str(out)], capsys)
    assert code == 1, err
    assert "error: the trial failed to start (making the sandbox): the Docker engine stopped answering" in err
    meta = strict_json(out / "meta.json")
    assert meta["status"] == "failed_to_start" and meta["failed_stage"] == "making the sandbox"
    assert meta["reason"] == "RuntimeError: the Docker engine stopped answering"
    assert not (out / "workdir").exists()


def test_an_interrupt_while_the_image_builds_is_recorded(task_dir, tmp_path, monkeypatch):
    """SIGTERM or Ctrl-C during the minutes of a docker image build: the folder must not stay at 'starting'."""
    from autoembed.trial import run as run_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "make_sandbox", interrupted)
    result = run_module.run("recipe", task=str(task_dir), hours=0.01, sandbox="bwrap", out=tmp_path / "run",
                            progress=lambda line: None)
    meta = strict_json(tmp_path / "run" / "meta.json")
    assert meta["status"] == "interrupted_while_preparing" and meta["exit_reason"] == "interrupted"
    assert result.score is None and result.exit_code == 1


def strict_json(path: Path) -> dict:
    def refuse(constant):
        raise AssertionError(f"{path} holds non-standard JSON: {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


# -- help texts and messages ----------------------------------------------------------------------------------------
def test_help_describes_the_project_and_the_default_budget(capsys):
    code, out, _ = autoembed(["--help"], capsys)
    assert code == 0 and "can an AI agent train a good embedding model" in " ".join(out.split())
    assert "Each verb lives" not in out
    code, out, _ = autoembed(["run", "--help"], capsys)
    text = " ".join(out.split())
    assert code == 0 and "default: the task's budget in its task.toml, 2 h for embed" in text, text
    assert "0 the trial ran and scored clean; 1 it ran but" in text and "2 bad input" in text


def test_score_of_a_missing_workdir_is_an_error_line(capsys):
    code, _, err = autoembed(["score", "/nonexistent"], capsys)
    assert code == 2 and err.strip() == "autoembed score: error: no workdir at /nonexistent", err


def test_loading_a_model_draws_no_progress_bars(task_dir):
    from autoembed.task.base_model import resolve_base_model
    from autoembed.task.spec import load_spec

    spec = load_spec(str(task_dir))
    model = resolve_base_model(spec.base_model, spec.base_model_sha256)
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    done = subprocess.run([sys.executable, "-m", "autoembed.cli", "evaluate", str(model), "--task", str(task_dir),
                           "--fast", "--device", "cpu", "--bootstrap", "10"], capture_output=True, text=True,
                          timeout=300, cwd=REPO_ROOT, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ndcg@10" in done.stdout
    assert "Loading weights" not in done.stderr and "it/s]" not in done.stderr, done.stderr[-2000:]


def test_readme_links_stay_inside_the_repository():
    text = (REPO_ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert "ARCHITECTURE.md" in local, "the README points at the architecture document"
    for link in local:
        target = (REPO_ROOT / link).resolve()
        assert target.is_relative_to(REPO_ROOT.resolve()), f"{link} leaves the repository"
        assert target.exists(), f"README links to {link}, which does not exist"


# -- budgets and GPUs ----------------------------------------------------------------------------------------------
def test_a_scripted_harness_may_run_briefly_and_a_real_model_may_not(task_dir):
    from autoembed.trial.preflight import PreflightError, preflight

    script = task_dir.parent / "script.json"
    script.write_text(json.dumps([{"text": "done"}]))
    preflight(f"harness:{BASELINE}", model=f"scripted:{script}", task=str(task_dir), hours=0.0005, sandbox="none")
    with pytest.raises(PreflightError, match="too short to act: it needs at least 30 s"):
        preflight("recipe", task=str(task_dir), hours=0.005, sandbox="none")


def test_the_harness_finish_margin_scales_with_its_budget():
    """A fixed 120 s margin left a 108 s trial (--hours 0.03) no turn at all: now it is at most a tenth."""
    from autoembed.agents.harness_runtime import finish_margin_s, scale_finish_margin

    assert finish_margin_s(120, 108) == pytest.approx(10.8) and finish_margin_s(120, 3 * 3600) == 120
    assert finish_margin_s(120, 20) == 5.0 and finish_margin_s(2, 20) == 2
    names = {"FINISH_MARGIN_S": 120}
    exec("def harness_main(env):\n    return FINISH_MARGIN_S", names)  # noqa: S102 - a harness file's globals
    scale_finish_margin(names["harness_main"], 108)
    assert names["harness_main"](None) == pytest.approx(10.8)
    scale_finish_margin(len, 108)  # a harness without the constant (or a builtin) is left alone


def test_a_loop_with_trials_too_short_to_act_fails_up_front():
    from autoembed.loop.config import LoopConfig, validate

    config = LoopConfig(target="harness", task_model="anthropic:claude-sonnet-4-6", hours=1.0, trial_hours=0.005)
    with pytest.raises(ValueError, match=r"--trial-hours 0.005 gives each harness trial 18.0 s, too short to act: it "
                                         r"needs at least 30 s \(--trial-hours 0.009 or more\)"):
        validate(config)
    validate(LoopConfig(target="harness", task_model="anthropic:claude-sonnet-4-6", hours=1.0, trial_hours=0.03))
    validate(LoopConfig(target="harness", task_model="scripted:x.json", hours=1.0, trial_hours=0.0001))


def test_gpus_on_a_machine_without_cuda_fail_before_a_run_folder(task_dir, traces, monkeypatch, capsys):
    from autoembed.trial import preflight as module

    monkeypatch.setattr(module.shutil, "which", lambda name: None)
    monkeypatch.setattr(module.os.path, "exists", lambda path: False)
    code, out, err = autoembed(["run", "recipe", "--task", str(task_dir), "--sandbox", "bwrap", "--hours", "0.01",
                                "--gpus", "0"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, (out, err)
    assert "--gpus 0: this machine shows no NVIDIA GPU" in err and "leave --gpus out to run on the CPU" in err
    assert no_trial_folder(traces)


def test_gpus_are_checked_against_nvidia_smi_and_the_torch_build(tmp_path, monkeypatch):
    from autoembed.trial import preflight as module

    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 0\necho 1\n")
    smi.chmod(0o755)
    monkeypatch.setattr(module.shutil, "which", lambda name: str(smi) if name == "nvidia-smi" else None)
    monkeypatch.setattr(module, "_torch_cuda_build", lambda: ("2.9.0+cu128", "12.8"))
    module.check_gpus(["1"])
    with pytest.raises(module.PreflightError, match="this machine has GPUs 0,1, not 3: pass --gpus 0"):
        module.check_gpus(["0", "3"])
    monkeypatch.setattr(module, "_torch_cuda_build", lambda: ("2.9.0+cpu", None))
    with pytest.raises(module.PreflightError, match=r"torch 2.9.0\+cpu here is built without CUDA"):
        module.check_gpus(["0"])
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the driver' >&2\n"
                   "exit 9\n")
    with pytest.raises(module.PreflightError, match="nvidia-smi failed .*could not communicate with the driver"):
        module.check_gpus(["0"])


def test_the_torch_build_is_read_without_importing_torch():
    from autoembed.trial.preflight import _torch_cuda_build

    found = subprocess.run([sys.executable, "-c", "import sys; from autoembed.trial.preflight import _torch_cuda_build;"
                            " print(_torch_cuda_build()); print('torch' in sys.modules)"], capture_output=True,
                           text=True, timeout=60, check=True).stdout.split("\n")
    assert found[1] == "False" and found[0] == str(_torch_cuda_build())
    import torch

    assert _torch_cuda_build() == (torch.__version__, torch.version.cuda or torch.version.hip)


def test_evaluate_refuses_a_folder_without_a_model_at_once(tmp_path):
    """`autoembed evaluate /tmp` failed after an 18 s torch import with a transformers error."""
    empty = tmp_path / "empty"
    empty.mkdir()
    for target, message in ((empty, "holds no model (none of modules.json"), (tmp_path / "nope", "no such folder")):
        done = subprocess.run([sys.executable, "-c", "import sys; from autoembed.cli import main; code = main(sys.argv[1:]);"
                               " print('torch' in sys.modules); sys.exit(code)", "evaluate", str(target)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        assert done.stdout.strip() == "False", "torch was imported before the folder was checked"
        assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
