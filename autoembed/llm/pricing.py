"""Estimated USD for a call's usage. Estimates, not invoices.

Prices come from genai-prices (pydantic's maintained table: per provider, with long-context tiers and dated
variants; its data ships inside the package, so it works offline and never fetches unless asked), and from the
user: AUTOEMBED_PRICES="model=input,output[,cache_read[,cache_write]];..." in USD per million tokens, for a model
the table does not know (a local server, a new model: give 0,0 for a free one). The user's prices win.

A model is priced only when its id is one the table names (an exact id, or an alias it lists) or a dated variant
of one (claude-3-opus-20240229, gpt-5-2025-08-07): the table's own prefix rules would price claude-sonnet-4-6-x as
claude-sonnet-4-6, and a loose prefix under-counts (gpt-5-pro is not gpt-5). Unknown is None, never free.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from typing import NamedTuple

from autoembed.trace import Usage

PRICE_ENV = "AUTOEMBED_PRICES"
PRICE_HELP = (f"give its price in the environment of the process that runs the trial or loop: "
              f"{PRICE_ENV}='<model>=<input>,<output>[,<cache read>,<cache write>]' in USD per million tokens "
              f"(';' between models; 0,0 for a free local model)")
# what may follow a named id: a date (-20240229, -2025-08-07, @20240229), a version number (-001) or -latest
DATED_VARIANT = r"(?:-\d{8}|-\d{4}-\d{2}-\d{2}|@\d{8}|-\d{3}|-latest)?"
TABLE_PROVIDER = {"anthropic": "anthropic", "openai": "openai", "gemini": "google", "google": "google"}
GUESS_ORDER = ("anthropic", "openai", "google")  # when the caller does not say whose model it is


class Price(NamedTuple):
    """USD per million tokens."""

    input: float
    output: float
    cache_read: float = 0.0
    cache_write: float = 0.0

    def cost(self, usage: Usage) -> float:
        return (usage.input_tokens * self.input + usage.output_tokens * self.output
                + usage.cache_read_tokens * self.cache_read + usage.cache_write_tokens * self.cache_write) / 1e6


def parse_prices(text: str) -> dict[str, Price]:
    """'m1=3,15;m2=0,0' -> {model: Price}; a ValueError that names the entry and the expected form."""
    prices = {}
    for entry in filter(None, (e.strip() for e in text.split(";"))):
        model, _, numbers = entry.partition("=")
        try:
            values = [float(v) for v in numbers.split(",")]
        except ValueError:
            values = []
        if not model.strip() or not 2 <= len(values) <= 4 or any(v < 0 or v != v or v == float("inf") for v in values):
            raise ValueError(f"{PRICE_ENV}: bad entry {entry!r}; expected <model>=<input>,<output>[,<cache read>,"
                             f"<cache write>] with USD per million tokens, each a number >= 0")
        prices[model.strip()] = Price(*values)
    return prices


def prices_from_env(environ: dict[str, str] | None = None) -> dict[str, Price]:
    environ = os.environ if environ is None else environ
    return parse_prices(environ.get(PRICE_ENV, ""))


class PriceBook:
    """The prices one gateway charges by: the user's, then the table's (exact ids and dated variants only)."""

    def __init__(self, user: dict[str, Price] | None = None):
        self.user = dict(user or {})

    def known(self, model: str, provider: str | None = None) -> bool:
        return self._user_price(model) is not None or _table_model(model, provider) is not None

    def cost(self, model: str, usage: Usage, provider: str | None = None) -> float | None:
        """USD for this usage (input_tokens is the uncached part of the prompt); None when the model is unknown."""
        price = self._user_price(model)
        if price is not None:
            return price.cost(usage)
        found = _table_model(model, provider)
        if found is None:
            return None
        flat = _flat_price(model, found)
        if flat is not None:  # the common case, in floats: the table's own calculation costs ~0.1-0.2 ms a call
            return flat.cost(usage)
        from genai_prices import Usage as TableUsage, calc_price

        # the table's input_tokens is the whole prompt, cache reads and writes included
        table_usage = TableUsage(input_tokens=usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens,
                                 cache_read_tokens=usage.cache_read_tokens, cache_write_tokens=usage.cache_write_tokens,
                                 output_tokens=usage.output_tokens)
        return float(calc_price(table_usage, model_ref=model, provider_id=found).total_price)

    def _user_price(self, model: str) -> Price | None:
        for name, price in self.user.items():
            if _names_variant(model, name):
                return price
        return None


def estimate_cost(model: str, usage: Usage, provider: str | None = None) -> float | None:
    """None when the model is unknown (a local server, a new model): unknown is not free."""
    return PriceBook(prices_from_env()).cost(model, usage, provider)


def _names_variant(model: str, name: str) -> bool:
    return re.fullmatch(re.escape(name.lower()) + DATED_VARIANT, model.lower()) is not None


@lru_cache(maxsize=1024)
def _table_model(model: str, provider: str | None) -> str | None:
    """The table's provider id under which `model` is priced, when the table names it or a dated variant of it."""
    if not model or not table_available():
        return None
    from genai_prices import data_snapshot

    snapshot = data_snapshot.get_snapshot()
    wanted = TABLE_PROVIDER.get(provider or "", provider)
    for provider_id in ([wanted] if wanted else GUESS_ORDER):
        try:
            _, info = snapshot.find_provider_model(model, None, provider_id, None)
        except LookupError:
            continue
        if any(_names_variant(model, name) for name in _clause_names(info.match) | {info.id}):
            return provider_id
    return None


@lru_cache(maxsize=1024)
def _flat_price(model: str, provider_id: str) -> Price | None:
    """The table's price for `model` when it is one rate per kind of token (no long-context tiers, no per-request
    fee), else None (then the table computes the cost itself). Read once per process: prices change by date rarely."""
    from datetime import datetime, timezone
    from decimal import Decimal

    from genai_prices import data_snapshot

    _, info = data_snapshot.get_snapshot().find_provider_model(model, None, provider_id, None)
    prices = info.get_prices(datetime.now(timezone.utc))
    rates = [getattr(prices, name, None) for name in ("input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok")]
    if getattr(prices, "requests_kcount", None) or not all(r is None or isinstance(r, Decimal) for r in rates):
        return None
    base = float(rates[0] or 0)
    # as the table does: cache reads and writes without a rate of their own are charged as input
    return Price(base, float(rates[1] or 0), float(rates[2]) if rates[2] is not None else base,
                 float(rates[3]) if rates[3] is not None else base)


@lru_cache(maxsize=1)
def table_available() -> bool:
    """Whether genai-prices is importable: a dependency on the host (the gateway charges by it); a sandbox's image
    may lack it, and there a cost is only shown, so unknown is the answer."""
    try:
        import genai_prices  # noqa: F401
    except ImportError:
        return False
    return True


def _clause_names(clause) -> set[str]:
    """The ids a match rule spells out: its `equals` values, and the stems of its `starts_with` rules (as ids)."""
    names = set()
    for attr in ("equals", "starts_with"):
        if isinstance(getattr(clause, attr, None), str):
            names.add(getattr(clause, attr))
    for attr in ("or_", "and_"):
        for inner in getattr(clause, attr, None) or []:
            names |= _clause_names(inner)
    return names


def table_price(model: str, provider: str | None = None) -> Price | None:
    """The table's price per million tokens for a short prompt (below any long-context tier), or None."""
    book = PriceBook()
    per = 1000  # tokens: below every tier's threshold

    def rate(**counts) -> float:
        return book.cost(model, Usage(**counts), provider) * 1e6 / per

    if book.cost(model, Usage(), provider) is None:
        return None
    return Price(rate(input_tokens=per), rate(output_tokens=per), rate(cache_read_tokens=per),
                 rate(cache_write_tokens=per))


class _TablePrices:
    """PRICES[model] -> table_price(model), a KeyError for a model the table does not price."""

    def __getitem__(self, model: str) -> Price:
        price = table_price(model)
        if price is None:
            raise KeyError(model)
        return price

    def __contains__(self, model: str) -> bool:
        return table_price(model) is not None


PRICES = _TablePrices()
