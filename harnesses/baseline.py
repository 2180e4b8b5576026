"""The task agent: one file the meta-agent may edit above the banner.

It trains an embedding model autonomously: the model sees the task's instructions, a bash tool, file tools
and a timer; this loop runs until the model stops calling tools, the turn limit, or the deadline. The whole
file runs as a process inside the trial's sandbox, so its tools act there. Run it with:  autoembed run harness:harnesses/baseline.py --model anthropic:claude-sonnet-4-6
"""

from __future__ import annotations

# ===== EDITABLE: the meta-agent may change anything from here to the banner =====

MODEL = "anthropic:claude-sonnet-4-6"
MAX_TURNS = 200  # knob: int 20..400
MAX_TOKENS = 8192
COMMAND_TIMEOUT_S = 1800  # per bash call; also capped by the deadline
# characters of a command's output / of a file shown to the model; the rest of an output goes to a file
OUTPUT_LIMIT = 10_000  # knob: choice 2500,5000,10000,20000,40000
READ_FILE_LIMIT = 10_000  # knob: choice 2500,5000,10000,20000,40000
FINISH_MARGIN_S = 120  # stop starting new turns this close to the deadline (the runtime caps it at a tenth)
FINISH_MARGIN_SHARE = 0.1  # knob: float 0.02..0.1
TEMPERATURE = None  # knob: choice None,0.0,0.3,0.7,1.0

SYSTEM_PROMPT = """You are an autonomous ML research engineer. You work alone in a sandboxed folder with one GPU
(maybe none) and a hard wall-clock deadline. Your job is to leave the best possible fine-tuned embedding model
in final_model/ before the deadline. Read instructions.md first and follow its rules exactly.

How to work:
- Check the time with the timer tool often; plan so that a good model is saved well before the deadline.
- Start by measuring the base model with task.py's evaluate, then train, evaluate, and keep the best model.
- Save a working model to final_model/ early, then improve it; never leave final_model/ half-written.
- Long jobs: run them with a timeout below the time left; prefer several short runs to one long one.
- Never ask questions; nobody will answer. Finish every process before your last message.
"""


def create_tools(env):
    """The tools offered to the model. Each returns text; errors are shown to the model."""

    def bash(command: str, timeout: float = COMMAND_TIMEOUT_S) -> str:
        return env.bash(command, timeout=min(float(timeout), COMMAND_TIMEOUT_S), limit=OUTPUT_LIMIT)

    def read_file(path: str) -> str:
        return env.read_file(path, limit=READ_FILE_LIMIT)

    def write_file(path: str, content: str) -> str:
        return env.write_file(path, content)

    def timer() -> str:
        left = env.seconds_left()
        return f"{left / 60:.1f} minutes left (deadline in {int(left)} s)"

    return [
        env.Tool("bash", "Run a bash command in the work folder (inside the sandbox). Returns exit status and output.",
                 {"type": "object", "properties": {"command": {"type": "string"},
                                                   "timeout": {"type": "number", "description": "seconds"}},
                  "required": ["command"]}, bash),
        env.Tool("read_file", "Read a text file in the work folder.",
                 {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}, read_file),
        env.Tool("write_file", "Create or overwrite a text file in the work folder.",
                 {"type": "object", "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
                  "required": ["path", "content"]}, write_file),
        env.Tool("timer", "Time left before the deadline.", {"type": "object", "properties": {}}, timer),
    ]


def with_temperature(llm):
    """TEMPERATURE (None: the provider's default) for clients that build their request in request() (Anthropic,
    OpenAI); other clients keep their default."""
    build = getattr(llm, "request", None)
    if TEMPERATURE is not None and callable(build):
        llm.request = lambda *args, **kwargs: {**build(*args, **kwargs), "temperature": TEMPERATURE}
    return llm


def run_task(env, llm, tools) -> int:
    """The orchestration loop. Returns the number of turns taken."""
    from autoembed.llm.base import Message

    llm = with_temperature(llm)
    # a share of the budget, 5 s at least, and never over FINISH_MARGIN_S as the runtime scaled it
    finish_margin = min(FINISH_MARGIN_S, max(5.0, FINISH_MARGIN_SHARE * env.seconds_left()))
    messages = [Message("user", text=env.prompt)]
    for turn in range(1, MAX_TURNS + 1):
        if env.seconds_left() < finish_margin:
            return turn - 1
        response = env.complete(llm, messages, system=SYSTEM_PROMPT, tools=tools, max_tokens=MAX_TOKENS)
        messages.append(Message("assistant", text=response.text, tool_calls=response.tool_calls,
                                provider_state=response.provider_state))
        if not response.tool_calls:
            return turn
        for call in response.tool_calls:
            output = env.run_tool(tools, call)
            messages.append(Message("tool", text=output, tool_call_id=call.id, name=call.name))
    return MAX_TURNS


# ===== FIXED ADAPTER: the meta-agent must not edit below this line =====
# The contract with the runner (autoembed/agents/harness.py): it checks the hash of everything below the banner
# on the host, then runs `python <a copy of this file>` INSIDE the trial's sandbox, where main() gives
# harness_main an env (autoembed/agents/harness_runtime.py): env.prompt, env.workdir, env.seconds_left(),
# env.llm(model), env.complete(...), env.run_tool(...), env.bash/read_file/write_file, env.Tool. Tools act
# inside the sandbox, model calls go through the trial's gateway, the trace goes to the host through env, and
# the sandbox kills this process at the deadline whatever this file does.


def harness_main(env) -> int:
    llm = env.llm(env.model or MODEL)
    return run_task(env, llm, create_tools(env))


if __name__ == "__main__":
    import sys

    from autoembed.agents.harness_runtime import main

    sys.exit(main(harness_main))
