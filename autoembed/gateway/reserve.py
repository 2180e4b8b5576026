"""What a generation request may cost at most, reserved before it is forwarded and settled when it ends.

The most a call can cost is its prompt (estimated from the body's size) plus its cap on output tokens, both at
the model's price. A request with no cap gets one (DEFAULT_MAX_OUTPUT_TOKENS), so that the most is bounded;
one whose cap is not a positive whole number is refused. (A model whose output the user priced at 0, a local
server, gets no cap set: there is nothing to bound.) Settling charges what the provider declared, except
for a call that did not finish (the client cut its stream, a timeout, the upstream dropped mid-reply): the
provider may bill what it generated anyway, so that call pays its reservation or its declared usage, whichever
is larger.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from autoembed.gateway.wire import Wire
from autoembed.llm.pricing import PRICE_HELP, PriceBook, table_available
from autoembed.trace import Usage

CHARS_PER_TOKEN = 3  # body bytes per prompt token, estimated low (English text runs ~4): a reservation errs high
# set on a generation request that names no cap on its output: within every current model's own output limit
# (gpt-4o's 16,384 is the lowest of those priced), so a provider does not refuse the request for it
DEFAULT_MAX_OUTPUT_TOKENS = 16_384


@dataclass
class Reservation:
    model: str
    usd: float
    prompt_tokens: int  # estimated
    max_output: int
    body: bytes  # what is forwarded: the request as sent, or with the output cap it lacked

    @property
    def tokens(self) -> int:
        """The most tokens the call may use (a free model's uncapped output counts as none)."""
        return self.prompt_tokens + self.max_output


class Refusal(Exception):
    def __init__(self, status: int, reason: str, message: str):
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


def reserve_for(wire: Wire, tail: str, body, raw: bytes, book: PriceBook) -> Reservation:
    """The reservation for one generation request, or a Refusal (not JSON, an unpriced model, a bad output cap)."""
    path = "/" + tail
    if not isinstance(body, dict):
        raise Refusal(400, "invalid_request", "a generation request must be a JSON object")
    model = wire.model(path, body, {})
    if not book.known(model, wire.name):
        missing = "" if table_available() else " (and the price table, genai-prices, is not installed on this host)"
        raise Refusal(403, "unpriced_model", f"model {model!r} has no known price{missing}, so its spend cannot be "
                                             f"counted against the caps; {PRICE_HELP}")
    limit = wire.max_output(path, body)
    free_output = book.cost(model, Usage(output_tokens=1), wire.name) == 0  # a local model the user priced at 0
    if limit is None and free_output:
        limit = 0  # nothing to bound: left to the server's own default
    elif limit is None:
        wire.set_max_output(path, body, DEFAULT_MAX_OUTPUT_TOKENS)
        limit, raw = DEFAULT_MAX_OUTPUT_TOKENS, json.dumps(body).encode()
    elif isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        raise Refusal(400, "invalid_request", f"the request's cap on output tokens must be a positive whole number, "
                                              f"got {limit!r}")
    acting = provider_side_tools(body)
    if acting:
        raise Refusal(403, "provider_side_tool", f"the request asks the provider to act for it ({', '.join(acting)}): "
                                                 f"such tools reach the network outside the sandbox and bill per use "
                                                 f"beyond tokens; declare your own tools and run them in the sandbox")
    if wire.runs_after_reply(path, body):
        raise Refusal(403, "runs_after_reply", "a request that keeps the provider working after its reply (background) "
                                               "is not forwarded: its spend could not be counted")
    choices = wire.choices(path, body)
    if choices is None:
        choices = 1
    elif isinstance(choices, bool) or not isinstance(choices, int) or choices <= 0:
        raise Refusal(400, "invalid_request", f"the number of replies asked for must be a positive whole number, "
                                              f"got {choices!r}")
    prompt = len(raw) // CHARS_PER_TOKEN + 1
    output = limit * choices  # each reply up to the cap
    usd = book.cost(model, Usage(input_tokens=prompt, output_tokens=output), wire.name)
    return Reservation(model, usd, prompt, output, raw)


# tools the provider runs itself (its web search and fetch, code execution, MCP servers, file search, URL reading):
# Anthropic's server tools are typed "<name>_<date>", OpenAI's Responses tools by type, Gemini's by key
_ANTHROPIC_SERVER_TOOL = ("web_search", "web_fetch", "code_execution", "mcp")
_OPENAI_HOSTED_TOOL = ("web_search", "file_search", "code_interpreter", "mcp", "image_generation", "remote_mcp")
_GEMINI_HOSTED_TOOL = {"googleSearch", "google_search", "googleSearchRetrieval", "google_search_retrieval",
                       "codeExecution", "code_execution", "urlContext", "url_context", "googleMaps", "google_maps",
                       "fileSearch", "file_search", "computerUse", "computer_use", "enterpriseWebSearch"}


def provider_side_tools(body: dict) -> list[str]:
    """The tools in a generation request that the provider would run on the caller's behalf, one name each."""
    found = []
    for key in ("mcp_servers", "web_search_options", "container"):  # Anthropic MCP, chat web search, code sandbox
        if body.get(key) is not None:  # {} asks for it too
            found.append(key)
    tools = body.get("tools")
    for tool in tools if isinstance(tools, list) else []:
        if not isinstance(tool, dict):
            continue
        kind = tool.get("type")
        if isinstance(kind, str) and kind.startswith(_ANTHROPIC_SERVER_TOOL + _OPENAI_HOSTED_TOOL):
            found.append(kind)
        found += sorted(k for k in tool if k in _GEMINI_HOSTED_TOOL)
    return found


def charge(reservation: Reservation | None, declared_usd: float | None, finished: bool) -> float:
    """What a call pays: its declared usage; at least its reservation when it did not finish."""
    declared = declared_usd or 0.0
    if reservation is None or finished:
        return declared
    return max(declared, reservation.usd)
